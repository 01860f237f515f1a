//! The jimbus wire schemas: prost messages and tonic services generated from
//! `proto/jimbot/**.proto` at build time (with protox, so no system protoc), the
//! encoded descriptor set for gRPC reflection and protobuf JSON, and the validators
//! generated from the `rule:` comments of the schemas.
//!
//! This crate only describes data. It must never do I/O or hold runtime state.

pub mod capped_ack;
pub mod decoded_size;
pub mod delivery;
pub mod encoded_events;
pub mod fields;
pub mod free_form;
mod hand_written;
pub mod joker;
pub mod validate;
pub mod wire;

/// Generated code, one module per protobuf package.
#[allow(clippy::all, missing_docs)]
pub mod jimbot {
    pub mod events {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/jimbot.events.v1.rs"));
            pub use crate::joker::Joker;
        }
    }
    pub mod bus {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/jimbot.bus.v1.rs"));
        }
    }
    include!(concat!(env!("OUT_DIR"), "/jimbot.rs"));
}

/// The `EventBusService` server as jimbus serves it: the generated trait and
/// service, with Subscribe streaming [`delivery::EncodedDelivery`], Publish
/// and PublishBatch taking [`encoded_events::EncodedEvents`] and Ack taking
/// [`capped_ack::CappedAck`] (the generated server in [`bus`] streams decoded
/// `SubscribeResponse`s and takes decoded requests).
#[allow(clippy::all, missing_docs)]
pub mod delivery_server {
    include!(concat!(env!("OUT_DIR"), "/delivery_server/jimbot.bus.v1.rs"));
}

pub use jimbot as coordinator;
pub use jimbot::bus::v1 as bus;
pub use jimbot::events::v1 as events;

/// The encoded `FileDescriptorSet` of every jimbus schema and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The descriptor pool of [`FILE_DESCRIPTOR_SET`], for protobuf JSON and reflection.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the build script wrote a valid descriptor set")
    })
}
