//! The generated validators: valid messages pass, and each single-field
//! violation is reported once, with its path and the rule from the schema.

use jimbus_proto::events::{self as pb, event::Payload};
use jimbus_proto::validate::{Validate, Violation};
use proptest::prelude::*;

fn joker() -> impl Strategy<Value = pb::Joker> {
    ("[A-Za-z ]{0,20}", "[a-z0-9]{0,8}", 0i32..=1000).prop_map(|(name, id, position)| pb::Joker {
        name: name.into(),
        id: id.into(),
        position,
        extra: None,
    })
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (0i32..100, 0i32..100, proptest::collection::vec(joker(), 0..5), any::<f64>()).prop_map(
            |(ante, round, jokers, chips)| {
                Payload::GameState(pb::GameStateEvent {
                    ante: Some(ante),
                    round: Some(round),
                    jokers,
                    chips: Some(chips),
                    ..Default::default()
                })
            }
        ),
        any::<(f64, f64)>().prop_map(|(a, b)| Payload::ScoreChanged(pb::ScoreChangedEvent {
            new_chips: a,
            new_mult: b,
            ..Default::default()
        })),
        "\\PC{0,200}".prop_map(|message| Payload::Error(pb::ErrorEvent { message, ..Default::default() })),
        Just(Payload::Generic(pb::GenericEvent::default())),
    ]
}

fn valid_event() -> impl Strategy<Value = pb::Event> {
    (
        "[a-f0-9-]{0,36}",
        "[A-Z_]{1,30}",
        "[a-z0-9-]{1,64}",
        any::<u64>(),
        prop_oneof![Just(0), Just(1), Just(2)],
        payload(),
    )
        .prop_map(|(event_id, event_type, session_id, sequence, priority, payload)| pb::Event {
            event_id,
            event_type,
            session_id,
            sequence,
            priority,
            payload: Some(payload),
            ..Default::default()
        })
}

/// One way to break one rule, and the violation it must produce.
type Breaker = (fn(&mut pb::Event), &'static str, &'static str);

const BREAKERS: &[Breaker] = &[
    (|e| e.event_type.clear(), "event_type", "required"),
    (|e| e.session_id.clear(), "session_id", "required"),
    (|e| e.session_id = "s".repeat(257), "session_id", "max_len=256"),
    (|e| e.event_id = "i".repeat(129), "event_id", "max_len=128"),
    (|e| e.payload = None, "payload", "required"),
    (|e| e.priority = 9, "priority", "enum: undefined value"),
    (|e| e.payload_field = -1, "payload_field", "enum: undefined value"),
    (|e| e.metadata = (0..65).map(|i| (i.to_string(), String::new())).collect(), "metadata", "max_items=64"),
    (
        |e| e.payload = Some(Payload::GameState(pb::GameStateEvent { ante: Some(-1), ..Default::default() })),
        "game_state.ante",
        "min=0",
    ),
    (
        |e| {
            let jokers = vec![pb::Joker::default(), pb::Joker { position: 1001, ..Default::default() }];
            e.payload = Some(Payload::GameState(pb::GameStateEvent { jokers, ..Default::default() }))
        },
        "game_state.jokers[1].position",
        "max=1000",
    ),
    (|e| e.payload = Some(Payload::Scoring(pb::ScoringEvent { step: None })), "scoring.step", "required"),
    (
        |e| {
            let response = pb::DecisionResponse { request_id: "r".into(), ..Default::default() };
            let kind = Some(pb::learning_decision_event::Kind::Response(response));
            e.payload = Some(Payload::LearningDecision(pb::LearningDecisionEvent { kind }))
        },
        "learning_decision.response.action",
        "required",
    ),
];

proptest! {
    #[test]
    fn valid_events_pass(event in valid_event()) {
        prop_assert_eq!(event.validate(), Ok(()));
    }

    #[test]
    fn each_single_violation_is_reported_with_its_path(event in valid_event(), which in 0..BREAKERS.len()) {
        let (breaker, path, rule) = BREAKERS[which];
        let mut broken = event;
        breaker(&mut broken);
        let violations = broken.validate().unwrap_err().0;
        prop_assert_eq!(violations, vec![Violation { path: path.into(), rule: rule.into() }]);
    }
}

#[test]
fn violations_print_as_path_and_rule() {
    let event = pb::Event { event_type: String::new(), session_id: "s".into(), ..Default::default() };
    assert_eq!(event.validate().unwrap_err().to_string(), "event_type: required; payload: required");
}
