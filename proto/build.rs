//! Compiles the `.proto` files with protox (no system protoc), generates prost
//! messages and tonic services, writes the descriptor set for reflection, and
//! generates the field validators from the `rule:` lines of the field comments.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "build/wire.rs"]
mod wire;

const PROTOS: &[&str] =
    &["jimbot/events/v1/events.proto", "jimbot/bus/v1/bus.proto", "jimbot/resource_coordinator.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let fds = compiler.file_descriptor_set();
    std::fs::write(out.join("descriptor.bin"), compiler.encode_file_descriptor_set())?;
    std::fs::write(out.join("validate.rs"), generate_validators(&fds.file)?)?;
    std::fs::write(out.join("sizes.rs"), generate_sizes(&fds.file))?;
    std::fs::write(out.join("wire.rs"), wire::generate(&fds.file)?)?;
    // Maps are BTreeMaps: an event's metadata is filled on the ingest path,
    // where std's HashMap would hash with SipHash and allocate a table per
    // event, and a BTreeMap encodes its entries in one order every time.
    // Joker and the free-form types are written by hand (src/joker.rs,
    // src/free_form.rs): their short strings are held inline.
    tonic_prost_build::configure()
        .btree_map(".")
        .bytes(".jimbot.bus.v1.DeadLetter.raw")
        .extern_path(".jimbot.events.v1.Joker", "crate::joker::Joker")
        .extern_path(".google.protobuf.Struct", "crate::free_form::Struct")
        .extern_path(".google.protobuf.Value", "crate::free_form::Value")
        .extern_path(".google.protobuf.ListValue", "crate::free_form::ListValue")
        .compile_fds(fds.clone())?;
    Ok(compile_delivery_server(fds, &out)?)
}

/// Generates a second `EventBusService` server whose Subscribe streams
/// `crate::delivery::EncodedDelivery` (wire-identical to `SubscribeResponse`)
/// and whose Publish and PublishBatch take `crate::encoded_events::EncodedEvents`
/// (events counted before they are decoded) and Ack `crate::capped_ack::CappedAck`
/// (positions past the rule's limit skipped), every other type being the one
/// generated above.
fn compile_delivery_server(mut fds: prost_types::FileDescriptorSet, out: &std::path::Path) -> std::io::Result<()> {
    let dir = out.join("delivery_server");
    std::fs::create_dir_all(&dir)?;
    fds.file.retain(|f| f.name() == "jimbot/bus/v1/bus.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(dir)
        .extern_path(".jimbot.bus.v1.SubscribeResponse", "crate::delivery::EncodedDelivery")
        .extern_path(".jimbot.bus.v1.PublishRequest", "crate::encoded_events::EncodedEvents")
        .extern_path(".jimbot.bus.v1.PublishBatchRequest", "crate::encoded_events::EncodedEvents")
        .extern_path(".jimbot.bus.v1.AckRequest", "crate::capped_ack::CappedAck")
        .extern_path(".jimbot.bus.v1", "crate::jimbot::bus::v1")
        .extern_path(".jimbot.events.v1", "crate::jimbot::events::v1")
        .extern_path(".google.protobuf.Struct", "crate::free_form::Struct")
        .compile_fds(fds)
}

/// The rules of one field or oneof, parsed from its comment.
#[derive(Default)]
struct Rules {
    required: bool,
    finite: bool,
    max_len: Option<u64>,
    max_items: Option<u64>,
    min: Option<String>,
    max: Option<String>,
}

fn parse_rules(comment: &str, what: &str) -> Result<Rules, String> {
    let mut rules = Rules::default();
    for line in comment.lines().map(str::trim) {
        let Some(list) = line.strip_prefix("rule:") else {
            continue;
        };
        for rule in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (name, value) = rule.split_once('=').unwrap_or((rule, ""));
            let number = || -> Result<String, String> {
                value.parse::<f64>().map_err(|_| format!("{what}: rule `{rule}` needs a number"))?;
                Ok(value.to_string())
            };
            match name {
                "required" => rules.required = true,
                "finite" => rules.finite = true,
                "max_len" => rules.max_len = Some(number()?.parse().map_err(|_| format!("{what}: bad {rule}"))?),
                "max_items" => rules.max_items = Some(number()?.parse().map_err(|_| format!("{what}: bad {rule}"))?),
                "min" => rules.min = Some(number()?),
                "max" => rules.max = Some(number()?),
                _ => return Err(format!("{what}: unknown rule `{rule}`")),
            }
        }
    }
    Ok(rules)
}

/// `.jimbot.events.v1.Event` -> `crate::jimbot::events::v1::Event`.
fn rust_path(type_name: &str) -> String {
    let mut parts: Vec<&str> = type_name.trim_start_matches('.').split('.').collect();
    let name = parts.pop().unwrap_or_default();
    let mut path = String::from("crate");
    for part in parts {
        path.push_str("::");
        path.push_str(part);
    }
    format!("{path}::{name}")
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

fn comment_at(file: &FileDescriptorProto, path: &[i32]) -> String {
    file.source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.clone())
        .unwrap_or_default()
}

fn generate_validators(files: &[FileDescriptorProto]) -> Result<String, String> {
    let mut code = String::from("// Generated by build.rs from the `rule:` comments. Do not edit.\n");
    for file in files.iter().filter(|f| f.package().starts_with("jimbot")) {
        for (index, message) in file.message_type.iter().enumerate() {
            code += &message_validator(file, message, index as i32)?;
        }
    }
    Ok(code)
}

/// The size of each generated message type by its full name, for
/// `crate::decoded_size` (top-level messages: the schemas nest none but map
/// entries, which are not types of their own).
fn generate_sizes(files: &[FileDescriptorProto]) -> String {
    let mut arms = String::new();
    for file in files.iter().filter(|f| f.package().starts_with("jimbot")) {
        for message in &file.message_type {
            let name = format!("{}.{}", file.package(), message.name());
            let _ = writeln!(
                arms,
                "        \"{name}\" => Some(std::mem::size_of::<{}>()),",
                rust_path(&format!(".{name}"))
            );
        }
    }
    format!(
        "// Generated by build.rs from the schemas. Do not edit.\n\
         /// The size of the type prost generated for the message `full_name`.\n\
         fn generated_size(full_name: &str) -> Option<usize> {{\n    match full_name {{\n{arms}        _ => None,\n    }}\n}}\n"
    )
}

fn is_map(files_message: &DescriptorProto, field: &FieldDescriptorProto) -> bool {
    field.type_name().ends_with("Entry")
        && files_message.nested_type.iter().any(|n| {
            field.type_name().ends_with(&format!(".{}", n.name())) && n.options.as_ref().is_some_and(|o| o.map_entry())
        })
}

fn message_validator(file: &FileDescriptorProto, message: &DescriptorProto, index: i32) -> Result<String, String> {
    let type_path = rust_path(&format!(".{}.{}", file.package(), message.name()));
    let mut body = String::new();
    for (field_index, field) in message.field.iter().enumerate() {
        if field.oneof_index.is_some() && !field.proto3_optional() {
            continue;
        }
        let what = format!("{}.{}", message.name(), field.name());
        let rules = parse_rules(&comment_at(file, &[4, index, 2, field_index as i32]), &what)?;
        body += &field_check(message, field, &rules)?;
    }
    for (oneof_index, oneof) in message.oneof_decl.iter().enumerate() {
        let synthetic = message.field.iter().any(|f| f.oneof_index == Some(oneof_index as i32) && f.proto3_optional());
        if synthetic {
            continue;
        }
        let what = format!("{}.{}", message.name(), oneof.name());
        let rules = parse_rules(&comment_at(file, &[4, index, 8, oneof_index as i32]), &what)?;
        body += &oneof_check(file.package(), message, oneof.name(), oneof_index as i32, &rules);
    }
    Ok(format!(
        "impl crate::validate::Validate for {type_path} {{\n    #[allow(unused_variables)]\n    fn validate_into(&self, path: &mut crate::validate::FieldPath, out: &mut Vec<crate::validate::Violation>) {{\n{body}    }}\n}}\n"
    ))
}

/// The statement that reports a broken rule where the path is already the
/// field's: the generated code keeps the path up to date as it descends.
fn report_here(rule: &str) -> String {
    format!("out.push(path.violation(\"{rule}\"));")
}

/// Checks on one value `v` (a reference) of a field's element type, each
/// reporting a broken rule with `report`.
fn value_check(field: &FieldDescriptorProto, rules: &Rules, report: &dyn Fn(&str) -> String) -> String {
    let mut checks = String::new();
    match field.r#type() {
        Type::String | Type::Bytes => {
            if let Some(n) = rules.max_len {
                let _ = writeln!(checks, "if v.len() > {n} {{ {} }}", report(&format!("max_len={n}")));
            }
        }
        Type::Double | Type::Float => {
            if rules.finite {
                let _ = writeln!(checks, "if !v.is_finite() {{ {} }}", report("finite"));
            }
            if let Some(min) = &rules.min {
                let _ = writeln!(checks, "if !((*v as f64) >= {min}_f64) {{ {} }}", report(&format!("min={min}")));
            }
            if let Some(max) = &rules.max {
                let _ = writeln!(checks, "if !((*v as f64) <= {max}_f64) {{ {} }}", report(&format!("max={max}")));
            }
        }
        Type::Enum => {
            let _ = writeln!(
                checks,
                "if {}::try_from(*v).is_err() {{ {} }}",
                rust_path(field.type_name()),
                report("enum: undefined value")
            );
        }
        Type::Message if field.type_name().starts_with(".jimbot.") => {
            checks += "crate::validate::Validate::validate_into(v, path, out);\n";
        }
        Type::Message if field.type_name() == ".google.protobuf.Struct" => {
            checks += "crate::validate::check_struct(v, path, out);\n";
        }
        Type::Message | Type::Group | Type::Bool => {}
        _ => {
            if let Some(min) = &rules.min {
                let _ = writeln!(checks, "if (*v as f64) < {min}_f64 {{ {} }}", report(&format!("min={min}")));
            }
            if let Some(max) = &rules.max {
                let _ = writeln!(checks, "if (*v as f64) > {max}_f64 {{ {} }}", report(&format!("max={max}")));
            }
        }
    }
    checks
}

/// The checks of one field. A message field, or a repeated one, puts its name
/// on the path for the checks below it, and only when it is there to check
/// (a message set, a list not empty); a single scalar puts it there only when
/// it breaks a rule. So a valid message costs no path store per scalar field
/// (docs/perf.md, "Ninth pass") nor per field it leaves out ("Twenty-ninth pass").
fn field_check(message: &DescriptorProto, field: &FieldDescriptorProto, rules: &Rules) -> Result<String, String> {
    let name = field.name();
    let scalar = field.label() != Label::Repeated && field.r#type() != Type::Message;
    if scalar {
        let report_named =
            |rule: &str| format!("path.push_field(\"{name}\"); out.push(path.violation(\"{rule}\")); path.pop();");
        let checks = value_check(field, rules, &report_named);
        let mut body = String::new();
        if rules.required && field.proto3_optional() {
            let _ = writeln!(body, "        if self.{name}.is_none() {{ {} }}", report_named("required"));
        } else if rules.required && matches!(field.r#type(), Type::String | Type::Bytes) {
            let _ = writeln!(body, "        if self.{name}.is_empty() {{ {} }}", report_named("required"));
        }
        if !checks.is_empty() {
            let binding = match field.proto3_optional() {
                true => format!("if let Some(v) = &self.{name} {{"),
                false => format!("{{ let v = &self.{name};"),
            };
            let _ = writeln!(body, "        {binding}\n{checks}}}");
        }
        return Ok(body);
    }
    let checks = value_check(field, rules, &report_here);
    let named = |inner: &str| format!("path.push_field(\"{name}\"); {inner} path.pop();");
    let mut body = String::new();
    if field.label() == Label::Repeated {
        if let Some(n) = rules.max_items {
            let report = report_here(&format!("max_items={n}"));
            let _ = writeln!(body, "        if self.{name}.len() > {n} {{ {} }}", named(&report));
        }
        if !is_map(message, field) && !checks.is_empty() {
            let each =
                format!("for (i, v) in self.{name}.iter().enumerate() {{ path.push_index(i);\n{checks}path.pop(); }}");
            let _ = writeln!(body, "        if !self.{name}.is_empty() {{ {} }}", named(&each));
        }
    } else {
        if rules.required {
            let _ = writeln!(body, "        if self.{name}.is_none() {{ {} }}", named(&report_here("required")));
        }
        if !checks.is_empty() {
            let _ = writeln!(body, "        if let Some(v) = &self.{name} {{ {} }}", named(&checks));
        }
    }
    Ok(body)
}

fn oneof_check(package: &str, message: &DescriptorProto, oneof: &str, oneof_index: i32, rules: &Rules) -> String {
    let module = rust_path(&format!(".{package}.{}", snake(message.name())));
    let enum_path = format!("{module}::{}", camel(oneof));
    let mut arms = String::new();
    for field in message.field.iter().filter(|f| f.oneof_index == Some(oneof_index)) {
        let checks = value_check(field, &Rules::default(), &report_here);
        let _ = writeln!(
            arms,
            "Some({enum_path}::{}(v)) => {{ path.push_field(\"{}\"); {checks} path.pop(); }}",
            camel(field.name()),
            field.name()
        );
    }
    let missing = if rules.required {
        format!("None => {{ path.push_field(\"{oneof}\"); out.push(path.violation(\"required\")); path.pop(); }}")
    } else {
        "None => {}".to_string()
    };
    format!("        #[allow(unreachable_patterns)]\n        match &self.{oneof} {{\n{arms}{missing}\n_ => {{}} }}\n")
}
