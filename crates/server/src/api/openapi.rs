//! `GET /api/v1/openapi.json`, generated from the field definitions of
//! crmsync-core, so every entity set, field, type and enum the server
//! validates is described, and nothing else.

use axum::Json;
use serde_json::{json, Value};
use std::sync::OnceLock;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr,
    Required, ResponseBuilder,
};

use crmsync_core::field::{FieldKind, MAX_TEXT};
use crmsync_core::field_rules::Direction;
use crmsync_core::settings::{OrgSettings, UserSettings};
use crmsync_core::EntitySet;

use crate::auth::Caller;
use crate::config::FilterKind;

pub async fn serve_openapi(_caller: Caller) -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(
        DOC.get_or_init(|| serde_json::to_value(document()).expect("OpenAPI serializes"))
            .clone(),
    )
}

fn string(format: Option<&str>) -> ObjectBuilder {
    let s = ObjectBuilder::new().schema_type(Type::String);
    match format {
        Some(f) => s.format(Some(SchemaFormat::Custom(f.into()))),
        None => s,
    }
}

/// `additionalProperties: false`: the server refuses unknown keys.
fn closed() -> AdditionalProperties<Schema> {
    AdditionalProperties::FreeForm(false)
}

fn uuid() -> Schema {
    string(Some("uuid")).into()
}

fn record_ref(sets: &[EntitySet]) -> Schema {
    ObjectBuilder::new()
        .property(
            "set",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(sets.iter().map(|s| s.as_str()))),
        )
        .property("id", uuid())
        .required("set")
        .required("id")
        .additional_properties(Some(closed()))
        .into()
}

/// A push operation's `regarding`: `{"set", "id"}`, `{"id"}` alone (a
/// mailbox keyword names the record by id, R-M7: the server finds its
/// set), or null (none).
fn pushed_regarding() -> Schema {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .property(
            "set",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(
                    crmsync_core::entity::REGARDING_SETS
                        .iter()
                        .map(|s| s.as_str()),
                )),
        )
        .property("id", uuid())
        .required("id")
        .additional_properties(Some(closed()))
        .description(Some(
            "the record the item is regarding; 'set' may be left out (the server finds it from the id)",
        ))
        .into()
}

fn field_schema(kind: FieldKind) -> Schema {
    match kind {
        FieldKind::Text => string(None).max_length(Some(MAX_TEXT)).into(),
        FieldKind::LongText => string(None).into(),
        FieldKind::Email => string(Some("email")).into(),
        FieldKind::Bool => ObjectBuilder::new().schema_type(Type::Boolean).into(),
        FieldKind::DateTime => string(Some("date-time")).into(),
        FieldKind::Date => string(Some("date")).into(),
        FieldKind::TimeZone => string(None)
            .pattern(Some("^[A-Za-z][A-Za-z0-9/_+-]{0,63}$"))
            .into(),
        FieldKind::Enum(values) => string(None)
            .enum_values(Some(values.iter().copied()))
            .into(),
        FieldKind::Percent => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(100))
            .into(),
        FieldKind::Count => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into(),
        FieldKind::Money => ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(0))
            .into(),
        FieldKind::Reference(_) => uuid(),
        FieldKind::Regarding => record_ref(crmsync_core::entity::REGARDING_SETS),
        FieldKind::Attendees => ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .property("email", string(Some("email")))
                    .property(
                        "role",
                        string(None).enum_values(Some(["required", "optional"])),
                    )
                    .property("resolved", record_ref(&EntitySet::ALL))
                    .required("email")
                    .additional_properties(Some(closed())),
            )
            .into(),
        FieldKind::Recurrence => ObjectBuilder::new()
            .property(
                "rrule",
                string(None).description(Some("RFC 5545 RRULE value, e.g. FREQ=WEEKLY;BYDAY=MO")),
            )
            .property(
                "exdates",
                ArrayBuilder::new().items(string(Some("date-time"))),
            )
            .required("rrule")
            .additional_properties(Some(closed()))
            .into(),
        FieldKind::AddressList => ArrayBuilder::new().items(string(Some("email"))).into(),
        FieldKind::Parties => ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .property("address", string(Some("email")))
                    .property(
                        "role",
                        string(None).enum_values(Some(["from", "to", "cc", "bcc"])),
                    )
                    .property("resolved", record_ref(&EntitySet::ALL))
                    .required("address")
                    .required("role")
                    .additional_properties(Some(closed())),
            )
            .into(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Record,
    Create,
    Update,
}

fn type_name(set: EntitySet, shape: Shape) -> String {
    let base = set.as_str();
    let mut name = base[..1].to_uppercase() + &base[1..];
    name.push_str(match shape {
        Shape::Record => "",
        Shape::Create => "Create",
        Shape::Update => "Update",
    });
    name
}

fn record_schema(set: EntitySet, shape: Shape) -> Schema {
    let mut obj = ObjectBuilder::new().additional_properties(Some(AdditionalProperties::FreeForm(
        shape == Shape::Record && set == EntitySet::Users,
    )));
    if shape == Shape::Record {
        obj = obj
            .property("id", uuid())
            .property(
                "version",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .property("created_at", string(Some("date-time")))
            .property("modified_at", string(Some("date-time")));
        for f in crmsync_core::record::COMMON_FIELDS {
            obj = obj.required(f);
        }
    }
    if set != EntitySet::Users || shape == Shape::Record {
        obj = obj.property("owner_id", uuid());
    }
    obj = obj.property(
        "state",
        string(None).enum_values(Some(set.states().iter().copied())),
    );
    for def in set.fields() {
        obj = obj.property(def.name, field_schema(def.kind));
        if def.required && shape != Shape::Update {
            obj = obj.required(def.name);
        }
    }
    obj.into()
}

fn json_body(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn reference(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

fn response(description: &str, schema: Option<RefOr<Schema>>) -> utoipa::openapi::Response {
    let r = ResponseBuilder::new().description(description);
    match schema {
        Some(s) => r.content("application/json", json_body(s)).build(),
        None => r.build(),
    }
}

fn error_responses(op: OperationBuilder, codes: &[&str]) -> OperationBuilder {
    codes.iter().fold(op, |op, code| {
        let what = match *code {
            "400" => "malformed request",
            "401" => "missing or bad token",
            "403" => "not allowed",
            "404" => "not found",
            "409" => "conflict",
            "412" => "stale If-Match version",
            "413" => "body too large",
            "422" => "invalid input",
            _ => "error",
        };
        op.response(*code, response(what, Some(reference("Error").into())))
    })
}

fn path_param(name: &str, schema: Schema) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(schema))
        .build()
}

fn query_param(name: &str, schema: Schema, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn if_match_header() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("If-Match")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some("the record's version; 412 if it changed"))
        .schema(Some(Schema::from(
            string(None).pattern(Some("^\"?[0-9]{1,18}\"?$")),
        )))
        .build()
}

fn body(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .content("application/json", json_body(schema))
        .required(Some(Required::True))
        .build()
}

fn any_object() -> Schema {
    ObjectBuilder::new().into()
}

fn add(paths: &mut Paths, path: &str, method: HttpMethod, op: OperationBuilder) {
    let item = PathItem::new(method, op.build());
    match paths.paths.get_mut(path) {
        Some(existing) => existing.merge_operations(item),
        None => {
            paths.paths.insert(path.to_string(), item);
        }
    }
}

fn record_paths(paths: &mut Paths) {
    let id_schema = uuid;
    for set in EntitySet::ALL {
        let name = set.as_str();
        let rec: RefOr<Schema> = reference(&type_name(set, Shape::Record)).into();
        let list = ObjectBuilder::new()
            .property("items", ArrayBuilder::new().items(rec.clone()))
            .property(
                "next_cursor",
                ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                    Type::String,
                    Type::Null,
                ])),
            )
            .required("items")
            .required("next_cursor");
        let op = OperationBuilder::new()
            .tag(name)
            .operation_id(Some(format!("list_{name}")))
            .summary(Some(format!("List {name}, newest change first")))
            .parameter(query_param(
                "owner",
                string(None).pattern(Some("^(me|[0-9a-fA-F-]{36})$")).into(),
                "'me' or a user id",
            ))
            .parameter(query_param(
                "modified_since",
                string(Some("date-time")).into(),
                "only records modified at or after this time",
            ))
            .parameter(query_param(
                "q",
                string(None).max_length(Some(200)).into(),
                "text to find in the record's text fields",
            ))
            .parameter(query_param(
                "limit",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(1000))
                    .into(),
                "page size, 1 to 1000 (default 50)",
            ))
            .parameter(query_param(
                "cursor",
                string(None).into(),
                "next_cursor of the previous page",
            ))
            .response(
                "200",
                response("a page of records", Some(Schema::from(list).into())),
            );
        add(
            paths,
            &format!("/api/v1/{name}"),
            HttpMethod::Get,
            error_responses(op, &["400", "401"]),
        );
        let mut created = response("the created record", Some(rec.clone()));
        if set == EntitySet::Users {
            created.description =
                "the created user, with its API token (shown only this once)".into();
        }
        let op = OperationBuilder::new()
            .tag(name)
            .operation_id(Some(format!("create_{name}")))
            .request_body(Some(body(reference(&type_name(set, Shape::Create)))))
            .response("201", created);
        add(
            paths,
            &format!("/api/v1/{name}"),
            HttpMethod::Post,
            error_responses(op, &["400", "401", "403", "409", "413", "422"]),
        );
        let item = format!("/api/v1/{name}/{{id}}");
        let op = OperationBuilder::new()
            .tag(name)
            .operation_id(Some(format!("get_{name}")))
            .parameter(path_param("id", id_schema()))
            .response(
                "200",
                response("the record (ETag: its version)", Some(rec.clone())),
            );
        add(
            paths,
            &item,
            HttpMethod::Get,
            error_responses(op, &["400", "401", "404"]),
        );
        let op = OperationBuilder::new()
            .tag(name)
            .operation_id(Some(format!("update_{name}")))
            .parameter(path_param("id", id_schema()))
            .parameter(if_match_header())
            .request_body(Some(body(reference(&type_name(set, Shape::Update)))))
            .response("200", response("the updated record", Some(rec.clone())));
        add(
            paths,
            &item,
            HttpMethod::Patch,
            error_responses(
                op,
                &["400", "401", "403", "404", "409", "412", "413", "422"],
            ),
        );
        let op = OperationBuilder::new()
            .tag(name)
            .operation_id(Some(format!("delete_{name}")))
            .parameter(path_param("id", id_schema()))
            .parameter(if_match_header())
            .response(
                "204",
                response("deleted; a tombstone keeps the id and a new version", None),
            );
        add(
            paths,
            &item,
            HttpMethod::Delete,
            error_responses(op, &["400", "401", "403", "404", "409", "412"]),
        );
    }
}

/// Settings and sync-field schemas come from the defaults' JSON shape.
fn schema_of_example(example: &Value) -> Schema {
    match example {
        Value::Bool(_) => ObjectBuilder::new().schema_type(Type::Boolean).into(),
        Value::Number(_) => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into(),
        Value::String(_) => string(None).into(),
        Value::Array(_) => ArrayBuilder::new().items(string(None)).into(),
        _ => any_object(),
    }
}

fn settings_schema(defaults: &Value, overrides: &[(&str, Schema)]) -> Schema {
    let mut obj = ObjectBuilder::new().additional_properties(Some(closed()));
    for (k, v) in defaults.as_object().expect("settings are objects") {
        let schema = overrides
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| schema_of_example(v));
        obj = obj.property(k, schema);
    }
    obj.into()
}

fn admin_paths(paths: &mut Paths) {
    let interval = || Schema::from(string(None).pattern(Some("^[0-9]{1,6}[smhd]$")));
    let org = settings_schema(
        &json!(OrgSettings::default()),
        &[
            ("sync_interval", interval()),
            ("sync_interval_min", interval()),
            (
                "mass_delete_max_percent",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(100))
                    .into(),
            ),
        ],
    );
    let mailbox_sets = crmsync_core::settings::MAILBOX_TYPES.map(|s| s.as_str());
    let user = settings_schema(
        &json!(UserSettings::default()),
        &[
            ("schedule_interval", interval()),
            (
                "entity_types",
                ArrayBuilder::new()
                    .items(string(None).enum_values(Some(mailbox_sets)))
                    .into(),
            ),
            (
                "auto_track",
                string(None)
                    .enum_values(Some([
                        "none",
                        "all",
                        "replies_to_crm_email",
                        "from_crm_contacts_leads_accounts",
                        "from_crm_records",
                    ]))
                    .into(),
            ),
        ],
    );
    let tag = "admin";
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("get_settings"))
        .response(
            "200",
            response("organization settings", Some(org.clone().into())),
        );
    add(
        paths,
        "/api/v1/settings",
        HttpMethod::Get,
        error_responses(op, &["401"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("patch_settings"))
        .request_body(Some(body(org.clone())))
        .response("200", response("organization settings", Some(org.into())));
    add(
        paths,
        "/api/v1/settings",
        HttpMethod::Patch,
        error_responses(op, &["400", "401", "403", "422"]),
    );
    let p = "/api/v1/users/{id}/settings";
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("get_user_settings"))
        .parameter(path_param("id", uuid()))
        .response(
            "200",
            response("the user's settings", Some(user.clone().into())),
        );
    add(
        paths,
        p,
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("patch_user_settings"))
        .parameter(path_param("id", uuid()))
        .request_body(Some(body(user.clone())))
        .response("200", response("the user's settings", Some(user.into())));
    add(
        paths,
        p,
        HttpMethod::Patch,
        error_responses(op, &["400", "401", "403", "404", "422"]),
    );

    filter_paths(paths, FilterKind::Sync, "sync-filters", "sync_filter");
    filter_paths(
        paths,
        FilterKind::Offline,
        "offline-filters",
        "offline_filter",
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("list_user_offline_filters"))
        .parameter(path_param("id", uuid()))
        .response(
            "200",
            response(
                "the active offline filters that apply to the user: system and theirs",
                Some(any_object().into()),
            ),
        );
    add(
        paths,
        "/api/v1/users/{id}/offline-filters",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404"]),
    );

    let directions = [
        Direction::ToMailbox,
        Direction::ToCrm,
        Direction::Both,
        Direction::None,
    ]
    .map(|d| json!(d));
    let sync_sets: Vec<&str> = EntitySet::ALL
        .iter()
        .filter(|s| s.syncs_to_mailbox())
        .map(|s| s.as_str())
        .collect();
    let field_directions = || {
        ObjectBuilder::new().additional_properties(Some(RefOr::T(Schema::from(
            string(None).enum_values(Some(directions.clone())),
        ))))
    };
    let fields_patch: Schema = OneOfBuilder::new()
        .item(field_directions().description(Some(
            "field name → direction (to_mailbox, to_crm, both, none)",
        )))
        .item(
            ObjectBuilder::new()
                .property("entity_set", string(None))
                .property("fields", field_directions())
                .required("fields")
                .additional_properties(Some(closed()))
                .description(Some("the document a GET returns, as it is or edited")),
        )
        .into();
    let p = "/api/v1/sync-fields/{set}";
    let set_param = || {
        path_param(
            "set",
            string(None).enum_values(Some(sync_sets.clone())).into(),
        )
    };
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("get_sync_fields"))
        .parameter(set_param())
        .response(
            "200",
            response("directions of every field", Some(any_object().into())),
        );
    add(
        paths,
        p,
        HttpMethod::Get,
        error_responses(op, &["401", "404"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("patch_sync_fields"))
        .parameter(set_param())
        .request_body(Some(body(fields_patch)))
        .response(
            "200",
            response("directions of every field", Some(any_object().into())),
        );
    add(
        paths,
        p,
        HttpMethod::Patch,
        error_responses(op, &["400", "401", "403", "404", "422"]),
    );

    let rule_fields = || {
        ObjectBuilder::new()
            .property(
                "entity_set",
                string(None).enum_values(Some(EntitySet::ALL.map(|s| s.as_str()))),
            )
            .property("field", string(None))
            .property("user_id", uuid())
            .property("can_read", ObjectBuilder::new().schema_type(Type::Boolean))
            .property(
                "can_update",
                ObjectBuilder::new().schema_type(Type::Boolean),
            )
            .additional_properties(Some(closed()))
    };
    let rule: Schema = rule_fields()
        .required("entity_set")
        .required("field")
        .required("can_read")
        .required("can_update")
        .into();
    // A PATCH takes any of the fields, and the id as the GET returned it.
    let rule_patch: Schema = rule_fields().property("id", uuid()).into();
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("list_field_security"))
        .response(
            "200",
            response("field-security rules", Some(any_object().into())),
        );
    add(
        paths,
        "/api/v1/field-security",
        HttpMethod::Get,
        error_responses(op, &["401", "403"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("create_field_security"))
        .request_body(Some(body(rule)))
        .response("201", response("the rule", Some(any_object().into())));
    add(
        paths,
        "/api/v1/field-security",
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "409", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("get_field_security"))
        .parameter(path_param("id", uuid()))
        .response("200", response("the rule", Some(any_object().into())));
    add(
        paths,
        "/api/v1/field-security/{id}",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("patch_field_security"))
        .parameter(path_param("id", uuid()))
        .request_body(Some(body(rule_patch)))
        .response("200", response("the rule", Some(any_object().into())));
    add(
        paths,
        "/api/v1/field-security/{id}",
        HttpMethod::Patch,
        error_responses(op, &["400", "401", "403", "404", "409", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("delete_field_security"))
        .parameter(path_param("id", uuid()))
        .response("204", response("deleted", None));
    add(
        paths,
        "/api/v1/field-security/{id}",
        HttpMethod::Delete,
        error_responses(op, &["400", "401", "403", "404"]),
    );

    let op = OperationBuilder::new()
        .tag("sync")
        .operation_id(Some("changes"))
        .summary(Some(
            "ids and versions of everything changed or deleted after a version",
        ))
        .parameter(query_param(
            "since",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .into(),
            "version (default 0)",
        ))
        .parameter(query_param(
            "limit",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1000))
                .into(),
            "at most this many (default 50)",
        ))
        .response(
            "200",
            response("changes, oldest first", Some(any_object().into())),
        );
    add(
        paths,
        "/api/v1/changes",
        HttpMethod::Get,
        error_responses(op, &["400", "401"]),
    );
    let op = OperationBuilder::new()
        .tag("meta")
        .operation_id(Some("openapi"))
        .response("200", response("this document", Some(any_object().into())));
    add(
        paths,
        "/api/v1/openapi.json",
        HttpMethod::Get,
        error_responses(op, &["401"]),
    );
    let op = OperationBuilder::new()
        .tag("meta")
        .operation_id(Some("healthz"))
        .securities(Some(Vec::<SecurityRequirement>::new()))
        .response(
            "200",
            response(
                "the server and its database answer",
                Some(any_object().into()),
            ),
        )
        .response(
            "503",
            response("the database does not answer", Some(any_object().into())),
        );
    add(paths, "/healthz", HttpMethod::Get, op);
    let op = OperationBuilder::new()
        .tag("meta")
        .operation_id(Some("metrics"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("Prometheus text")
                .content("text/plain", ContentBuilder::new().build())
                .build(),
        );
    add(
        paths,
        "/metrics",
        HttpMethod::Get,
        error_responses(op, &["401"]),
    );
}

/// The paths of one kind of filter (R-S6, R-O1): `/api/v1/{path}` and
/// `/api/v1/{path}/{id}`, operations named after `id`.
fn filter_paths(paths: &mut Paths, kind: FilterKind, path: &str, id: &str) {
    let tag = "admin";
    let sets: Vec<&str> = kind.sets().iter().map(|s| s.as_str()).collect();
    let base = format!("/api/v1/{path}");
    let filter = || {
        ObjectBuilder::new()
        .property("name", string(None).min_length(Some(1)).max_length(Some(200)))
        .property("entity_set", string(None).enum_values(Some(sets.clone())))
        .property("scope", string(None).enum_values(Some(["system", "user"])))
        .property("user_id", uuid())
        .property("active", ObjectBuilder::new().schema_type(Type::Boolean))
        .property("condition", ObjectBuilder::new().description(Some("condition tree: {\"all\": [..]}, {\"any\": [..]}, {\"not\": {..}} or {\"field\", \"op\", \"value\"}; values may be @me or @now-30d")))
        .additional_properties(Some(closed()))
    };
    let filter_create: Schema = filter()
        .required("name")
        .required("entity_set")
        .required("condition")
        .into();
    // A PATCH also takes the id as the GET returned it.
    let filter: Schema = filter().property("id", uuid()).into();
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(format!("list_{id}s")))
        .response(
            "200",
            response(
                "system filters and the caller's filters",
                Some(any_object().into()),
            ),
        );
    add(paths, &base, HttpMethod::Get, error_responses(op, &["401"]));
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(format!("create_{id}")))
        .request_body(Some(body(filter_create)))
        .response("201", response("the filter", Some(any_object().into())));
    add(
        paths,
        &base,
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "422"]),
    );
    let p = &format!("/api/v1/{path}/{{id}}");
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(format!("get_{id}")))
        .parameter(path_param("id", uuid()))
        .response("200", response("the filter", Some(any_object().into())));
    add(
        paths,
        p,
        HttpMethod::Get,
        error_responses(op, &["400", "401", "404"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(format!("patch_{id}")))
        .parameter(path_param("id", uuid()))
        .request_body(Some(body(filter)))
        .response("200", response("the filter", Some(any_object().into())));
    add(
        paths,
        p,
        HttpMethod::Patch,
        error_responses(op, &["400", "401", "403", "404", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some(format!("delete_{id}")))
        .parameter(path_param("id", uuid()))
        .response("204", response("deleted", None));
    add(
        paths,
        p,
        HttpMethod::Delete,
        error_responses(op, &["400", "401", "403", "404"]),
    );
}

/// R-O1: the change feed and identity of an offline replica.
fn offline_paths(paths: &mut Paths) {
    let tag = "offline";
    let count = |max: i64| {
        Schema::from(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(if max == 0 { 0 } else { 1 }))
                .maximum((max > 0).then_some(max)),
        )
    };
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("offline_changes"))
        .parameter(query_param(
            "since",
            count(0),
            "the next_since of the previous page (0: from the start)",
        ))
        .parameter(query_param(
            "limit",
            count(crate::offline::feed::MAX_LIMIT),
            "rows of the change sequence to read (default 1000)",
        ))
        .response(
            "200",
            response(
                "records matching the caller's offline filters, records to remove, next_since, more, filters (fingerprint)",
                Some(any_object().into()),
            ),
        );
    add(
        paths,
        "/api/v1/offline/changes",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("offline_identity"))
        .response(
            "200",
            response(
                "the caller's user record and stored password hash (or null)",
                Some(any_object().into()),
            ),
        );
    add(
        paths,
        "/api/v1/offline/identity",
        HttpMethod::Get,
        error_responses(op, &["401", "403"]),
    );
}

fn sync_paths(paths: &mut Paths) {
    let tag = "sync";
    let obj = |props: &[(&str, Schema)], required: &[&str]| -> Schema {
        let mut o = ObjectBuilder::new().additional_properties(Some(closed()));
        for (k, v) in props {
            o = o.property(*k, v.clone());
        }
        for r in required {
            o = o.required(*r);
        }
        o.into()
    };
    let op_kinds = [
        "track",
        "update",
        "untrack",
        "delete",
        "set_regarding",
        "offline_create",
        "offline_update",
        "offline_delete",
    ];
    let operation: Schema = ObjectBuilder::new()
        .property(
            "op_id",
            string(None).min_length(Some(1)).max_length(Some(200)),
        )
        .property("kind", string(None).enum_values(Some(op_kinds)))
        .property(
            "set",
            string(None).enum_values(Some(EntitySet::ALL.map(|s| s.as_str()))),
        )
        .property("id", uuid())
        .property("crm_id", uuid())
        .property("item_uid", string(None))
        .property(
            "base_version",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .property("baseline", any_object())
        .property("fields", any_object())
        .property("mailbox_modified_at", string(Some("date-time")))
        .property(
            "modified_at",
            string(Some("date-time"))
                .description(Some("offline_update: when the replica changed the record")),
        )
        .property(
            "delete_in_crm",
            ObjectBuilder::new().schema_type(Type::Boolean),
        )
        .property("regarding", pushed_regarding())
        .property(
            "raw",
            string(None).description(Some("tracked email: the RFC 5322 message, base64")),
        )
        .required("op_id")
        .required("kind")
        .into();
    let ok = |what: &str| response(what, Some(any_object().into()));
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("register_client"))
        .request_body(Some(body(obj(
            &[
                (
                    "name",
                    string(None)
                        .min_length(Some(1))
                        .max_length(Some(100))
                        .into(),
                ),
                ("on_behalf_of", string(None).into()),
                (
                    "kinds",
                    ArrayBuilder::new()
                        .items(string(None).enum_values(Some(
                            crmsync_core::kind::MailboxKind::ALL.map(|k| k.as_str()),
                        )))
                        .description(Some(
                            "the kinds of collection the client's mailbox holds; nothing of the others is delivered. Absent: all",
                        ))
                        .into(),
                ),
            ],
            &["name"],
        ))))
        .response("201", ok("the new client"))
        .response("200", ok("the client already registered under that name"));
    add(
        paths,
        "/api/v1/sync/clients",
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("list_clients"))
        .parameter(query_param(
            "user",
            uuid(),
            "another user's clients (admins)",
        ))
        .response("200", ok("clients"));
    add(
        paths,
        "/api/v1/sync/clients",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403"]),
    );
    for (suffix, id, what) in [
        ("primary", "set_primary", "the client, now primary (R-C1)"),
        (
            "reset",
            "reset_client",
            "forgets R-S9 exclusions; the next prepare re-evaluates everything",
        ),
    ] {
        let op = OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(id))
            .parameter(path_param("id", uuid()))
            .response("200", ok(what));
        add(
            paths,
            &format!("/api/v1/sync/clients/{{id}}/{suffix}"),
            HttpMethod::Post,
            error_responses(op, &["400", "401", "403", "404", "409"]),
        );
    }
    let problem = obj(
        &[
            ("item", string(None).min_length(Some(1)).into()),
            ("problem", string(None).min_length(Some(1)).into()),
        ],
        &["item", "problem"],
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("set_client_problems"))
        .parameter(path_param("id", uuid()))
        .request_body(Some(body(obj(
            &[(
                "items",
                ArrayBuilder::new()
                    .items(RefOr::T(problem))
                    .max_items(Some(crmsync_core::MAX_REPORTED_PROBLEMS))
                    .into(),
            )],
            &["items"],
        ))))
        .response("200", ok("how many problems the client now shows (R-W6)"));
    add(
        paths,
        "/api/v1/sync/clients/{id}/problems",
        HttpMethod::Put,
        error_responses(op, &["400", "401", "403", "404", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("prepare"))
        .request_body(Some(body(obj(&[("client_id", uuid())], &["client_id"]))))
        .response("200", ok("batch id (or null), counts per type"));
    add(
        paths,
        "/api/v1/sync/prepare",
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "404", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("data"))
        .parameter(query_param("client_id", uuid(), "the client"))
        .parameter(query_param(
            "batch",
            uuid(),
            "the batch of the last prepare",
        ))
        .parameter(query_param(
            "cursor",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .into(),
            "next_cursor of the previous page",
        ))
        .parameter(query_param(
            "ids",
            string(None).into(),
            "comma-separated record ids: their full records",
        ))
        .response("200", ok("a page of deliveries, or records"));
    add(
        paths,
        "/api/v1/sync/data",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404", "409", "422"]),
    );
    let ack_item = obj(
        &[
            ("id", uuid()),
            (
                "version",
                ObjectBuilder::new().schema_type(Type::Integer).into(),
            ),
        ],
        &["id", "version"],
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("ack"))
        .request_body(Some(body(obj(
            &[
                ("client_id", uuid()),
                ("batch", uuid()),
                (
                    "items",
                    ArrayBuilder::new().items(RefOr::T(ack_item)).into(),
                ),
            ],
            &["client_id", "batch", "items"],
        ))))
        .response("200", ok("how many were acknowledged"));
    add(
        paths,
        "/api/v1/sync/ack",
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "404", "409", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("push"))
        .request_body(Some(body(obj(&[("client_id", uuid()), ("ops", ArrayBuilder::new().items(RefOr::T(operation)).max_items(Some(500)).into())], &["client_id", "ops"]))))
        .response("200", ok("one result per operation: ok (with the record) or refused (with a code and reason)"));
    add(
        paths,
        "/api/v1/sync/push",
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "404", "413", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("conflicts"))
        .parameter(query_param("user", uuid(), "another user's log (admins)"))
        .parameter(query_param("record", uuid(), "only this record"))
        .response("200", ok("R-F6 conflict log, newest first"));
    add(
        paths,
        "/api/v1/sync/conflicts",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("explain"))
        .parameter(query_param("client_id", uuid(), "the client"))
        .parameter(query_param(
            "set",
            string(None)
                .enum_values(Some(EntitySet::ALL.map(|s| s.as_str())))
                .into(),
            "entity set",
        ))
        .parameter(query_param("id", uuid(), "record id"))
        .response("200", ok("whether the record reaches the mailbox, and why"));
    add(
        paths,
        "/api/v1/sync/explain",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404"]),
    );
    let version = || -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into()
    };
    let required = |p: utoipa::openapi::path::Parameter| {
        let mut p = p;
        p.required = Required::True;
        p
    };
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("wait_for_changes"))
        .description(Some(
            "R-T7 long poll: answers as soon as a change after `since` may concern the client's mailbox (changed: true; prepare next), or after `timeout` seconds (at most 60, the default) with changed: false; also changed: false at once when the server shuts down. A `since` older than what the server remembers answers changed: true at once; one ahead of the server's version is refused (422).",
        ))
        .parameter(required(query_param("client_id", uuid(), "the client")))
        .parameter(required(query_param(
            "since",
            version(),
            "the upto_version of the client's last prepare",
        )))
        .parameter(query_param(
            "timeout",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .description(Some("longer values wait 60 s"))
                .into(),
            "seconds to wait at most (default and cap: 60)",
        ))
        .response(
            "200",
            response(
                "whether a change may concern the client, and the newest version the server knows",
                Some(
                    obj(
                        &[
                            ("changed", ObjectBuilder::new().schema_type(Type::Boolean).into()),
                            ("version", version()),
                        ],
                        &["changed", "version"],
                    )
                    .into(),
                ),
            ),
        );
    add(
        paths,
        "/api/v1/sync/wait",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("email_lookup"))
        .parameter(query_param(
            "message_ids",
            string(None).into(),
            "comma-separated Message-IDs from In-Reply-To and References",
        ))
        .parameter(query_param(
            "subject",
            string(None).into(),
            "the subject (tracking token, smart matching)",
        ))
        .parameter(query_param(
            "addresses",
            string(None).into(),
            "comma-separated addresses of the message (smart matching)",
        ))
        .response(
            "200",
            ok("R-M5: the tracked email the message belongs to, and how it matched"),
        );
    add(
        paths,
        "/api/v1/sync/emails/lookup",
        HttpMethod::Get,
        error_responses(op, &["400", "401"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("email_tagging"))
        .parameter(query_param(
            "since",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .into(),
            "version",
        ))
        .parameter(query_param("client_id", uuid(), "the asking client"))
        .response(
            "200",
            ok("R-M7: emails of the caller changed after the version"),
        );
    add(
        paths,
        "/api/v1/sync/emails/tagging",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404"]),
    );
    let op = OperationBuilder::new()
        .tag("emails")
        .operation_id(Some("email_raw"))
        .parameter(path_param("id", uuid()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("the message as received")
                .content("message/rfc822", ContentBuilder::new().build())
                .build(),
        );
    add(
        paths,
        "/api/v1/emails/{id}/raw",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "404"]),
    );
    for set in ["appointments", "serviceappointments"] {
        let op = OperationBuilder::new()
            .tag(set)
            .operation_id(Some(format!("instances_{set}")))
            .parameter(path_param("id", uuid()))
            .parameter(query_param(
                "from",
                string(Some("date-time")).into(),
                "window start (default now)",
            ))
            .parameter(query_param(
                "to",
                string(Some("date-time")).into(),
                "window end (default from + 12 months; at most 2 years)",
            ))
            .response(
                "200",
                ok("R-E2: the series' instances in the window and its exceptions"),
            );
        add(
            paths,
            &format!("/api/v1/{set}/{{id}}/instances"),
            HttpMethod::Get,
            error_responses(op, &["400", "401", "404", "422"]),
        );
    }
}

/// The `imap` or `dav` section of a connected mailbox (SPEC §13's keys;
/// the password inline only, never answered). `nullable`: in a PATCH, null
/// removes the section (and a key set to null is removed).
fn mailbox_section(keys: &[(&str, Schema)], nullable: bool) -> Schema {
    let mut o = ObjectBuilder::new().additional_properties(Some(closed()));
    if nullable {
        o = o.schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]));
    }
    for (k, v) in keys {
        o = o.property(*k, v.clone());
    }
    o.property(
        "password",
        string(None)
            .write_only(Some(true))
            .description(Some("stored encrypted; answers say password_set instead")),
    )
    .into()
}

/// The keys of `[mailbox.imap]` and `[mailbox.dav]` the API takes (all
/// but the password, which every section has).
fn imap_keys() -> Vec<(&'static str, Schema)> {
    let text = || -> Schema { string(None).into() };
    vec![
        ("host", text()),
        (
            "port",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(65535))
                .into(),
        ),
        (
            "security",
            string(None)
                .enum_values(Some(["none", "starttls", "tls"]))
                .into(),
        ),
        ("username", text()),
        ("inbox", text()),
        ("sent", text()),
        ("drafts", text()),
        (
            "tracked_folders",
            ArrayBuilder::new().items(string(None)).into(),
        ),
        (
            "folder_regarding",
            ObjectBuilder::new()
                .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
                    string(None).into(),
                ))))
                .description(Some(
                    "tracked folder -> SET/ID every message tracked from it is regarding",
                ))
                .into(),
        ),
        ("rescan_interval", text()),
        ("poll_interval", text()),
    ]
}

fn dav_keys() -> Vec<(&'static str, Schema)> {
    let url = || -> Schema { string(Some("uri")).into() };
    vec![
        ("contacts", url()),
        ("calendar", url()),
        ("tasks", url()),
        ("server", url()),
        ("username", string(None).into()),
        ("poll_interval", string(None).into()),
    ]
}

/// SPEC §15, R-V1: `/api/v1/mailboxes`.
fn mailbox_paths(paths: &mut Paths) {
    let tag = "mailboxes";
    let name = || -> Schema {
        string(None)
            .min_length(Some(1))
            .max_length(Some(100))
            .into()
    };
    let mailbox: RefOr<Schema> = reference("Mailbox").into();
    let body_of = |nullable: bool, with_user: bool| -> Schema {
        let mut o = ObjectBuilder::new()
            .additional_properties(Some(closed()))
            .property("name", name())
            .property("imap", mailbox_section(&imap_keys(), nullable))
            .property("dav", mailbox_section(&dav_keys(), nullable));
        if with_user {
            o = o
                .property("user_id", uuid())
                .required("name")
                .description(Some(
                    "give imap, dav, or both; user_id: another user's (admins)",
                ));
        }
        o.into()
    };
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("create_mailbox"))
        .request_body(Some(body(body_of(false, true))))
        .response(
            "201",
            response(
                "the mailbox, due for its first synchronization",
                Some(mailbox.clone()),
            ),
        );
    add(
        paths,
        "/api/v1/mailboxes",
        HttpMethod::Post,
        error_responses(op, &["400", "401", "403", "409", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("list_mailboxes"))
        .parameter(query_param(
            "user_id",
            uuid(),
            "another user's mailboxes (admins)",
        ))
        .response(
            "200",
            response(
                "the user's mailboxes",
                Some(
                    ObjectBuilder::new()
                        .property("items", ArrayBuilder::new().items(mailbox.clone()))
                        .required("items")
                        .into(),
                ),
            ),
        );
    add(
        paths,
        "/api/v1/mailboxes",
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403"]),
    );
    let item = "/api/v1/mailboxes/{id}";
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("get_mailbox"))
        .parameter(path_param("id", uuid()))
        .response("200", response("the mailbox", Some(mailbox.clone())));
    add(
        paths,
        item,
        HttpMethod::Get,
        error_responses(op, &["400", "401", "403", "404"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("patch_mailbox"))
        .parameter(path_param("id", uuid()))
        .request_body(Some(body(body_of(true, false))))
        .response(
            "200",
            response(
                "the mailbox; new credentials make it active and due at once",
                Some(mailbox),
            ),
        );
    add(
        paths,
        item,
        HttpMethod::Patch,
        error_responses(op, &["400", "401", "403", "404", "409", "422"]),
    );
    let op = OperationBuilder::new()
        .tag(tag)
        .operation_id(Some("delete_mailbox"))
        .parameter(path_param("id", uuid()))
        .response(
            "204",
            response(
                "no longer synchronized; nothing in the CRM or the mailbox is deleted",
                None,
            ),
        );
    add(
        paths,
        item,
        HttpMethod::Delete,
        error_responses(op, &["400", "401", "403", "404"]),
    );
    for (suffix, id, what, errors) in [
        (
            "test",
            "test_mailbox",
            "connects to the mailbox's servers: {\"ok\", \"checks\": [{\"what\", \"status\": \"ok\"|\"warning\"|\"failed\", \"detail\"}]}",
            &["400", "401", "403", "404", "409", "503"][..],
        ),
        (
            "sync",
            "resync_mailbox",
            "queued: the mailbox is synchronized as soon as a worker is free",
            &["400", "401", "403", "404"][..],
        ),
    ] {
        let op = OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(id))
            .parameter(path_param("id", uuid()))
            .response("200", response(what, Some(any_object().into())));
        add(
            paths,
            &format!("/api/v1/mailboxes/{{id}}/{suffix}"),
            HttpMethod::Post,
            error_responses(op, errors),
        );
    }
}

/// A mailbox as answered: its sections without passwords.
fn mailbox_schema() -> Schema {
    let answered = |keys: Vec<(&str, Schema)>| -> Schema {
        let mut o = ObjectBuilder::new();
        for (k, v) in keys {
            o = o.property(k, v);
        }
        o.property(
            "password_set",
            ObjectBuilder::new().schema_type(Type::Boolean),
        )
        .into()
    };
    let text_or_null = || {
        ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
    };
    ObjectBuilder::new()
        .property("id", uuid())
        .property("user_id", uuid())
        .property("name", string(None))
        .property("client_id", uuid())
        .property(
            "state",
            string(None).enum_values(Some(["active", "failing", "needs_reconnect", "disabled"])),
        )
        .property("next_run_at", text_or_null())
        .property("last_success_at", text_or_null())
        .property("last_error", text_or_null())
        .property(
            "last_counts",
            ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::Object,
                Type::Null,
            ])),
        )
        .property("failures", ObjectBuilder::new().schema_type(Type::Integer))
        .property("created_at", string(None))
        .property("modified_at", string(None))
        .property("imap", answered(imap_keys()))
        .property("dav", answered(dav_keys()))
        .required("id")
        .required("name")
        .required("state")
        .into()
}

pub fn document() -> OpenApi {
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .schema(
            "Error",
            ObjectBuilder::new().property(
                "error",
                ObjectBuilder::new()
                    .property("code", string(None))
                    .property("message", string(None))
                    .required("code")
                    .required("message"),
            ),
        );
    components = components.schema("Mailbox", mailbox_schema());
    for set in EntitySet::ALL {
        for shape in [Shape::Record, Shape::Create, Shape::Update] {
            components = components.schema(type_name(set, shape), record_schema(set, shape));
        }
    }
    let mut paths = Paths::new();
    record_paths(&mut paths);
    admin_paths(&mut paths);
    sync_paths(&mut paths);
    offline_paths(&mut paths);
    mailbox_paths(&mut paths);
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("crmsync CRM server").version(env!("CARGO_PKG_VERSION")).description(Some("SPEC §4: records, admin resources and health. Errors are {\"error\": {\"code\", \"message\"}}.")))
        .paths(paths)
        .components(Some(components.build()))
        .security(Some([SecurityRequirement::new("bearer", Vec::<String>::new())]))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_and_field_is_described() {
        let doc = serde_json::to_value(document()).unwrap();
        for set in EntitySet::ALL {
            assert!(
                doc["paths"][format!("/api/v1/{set}")]["post"].is_object(),
                "{set}"
            );
            assert!(
                doc["paths"][format!("/api/v1/{set}/{{id}}")]["patch"].is_object(),
                "{set}"
            );
            let schema = &doc["components"]["schemas"][type_name(set, Shape::Record)];
            for f in set.fields() {
                assert!(schema["properties"][f.name].is_object(), "{set}.{}", f.name);
            }
        }
        assert!(doc["paths"]["/api/v1/sync-filters"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/offline-filters/{id}"]["patch"].is_object());
        assert!(doc["paths"]["/api/v1/users/{id}/offline-filters"]["get"].is_object());
        assert!(doc["paths"]["/api/v1/offline/changes"]["get"].is_object());
        assert!(doc["paths"]["/api/v1/offline/identity"]["get"].is_object());
        assert!(doc["paths"]["/api/v1/mailboxes/{id}"]["patch"].is_object());
        assert_eq!(
            doc["components"]["schemas"]["ContactsCreate"]["required"],
            json!(["last_name"])
        );
    }

    /// The sections described are the sections read: every key of
    /// `[mailbox.imap]` and `[mailbox.dav]` but the agent's password_file
    /// and password_command (R-V1).
    #[test]
    fn r_v1_mailbox_sections_describe_the_keys_the_server_reads() {
        use crmsync_mailbox::settings::{DavSection, ImapSection};
        fn keys_of(full: Value) -> Vec<String> {
            let mut keys: Vec<String> = full
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !k.starts_with("password_"))
                .cloned()
                .collect();
            keys.sort();
            keys
        }
        fn described(keys: Vec<(&str, Schema)>) -> Vec<String> {
            let mut names: Vec<String> = keys.iter().map(|(k, _)| k.to_string()).collect();
            names.push("password".into());
            names.sort();
            names
        }
        let some = || Some("x".to_string());
        let imap = ImapSection {
            host: some(),
            port: Some(1),
            security: some(),
            username: some(),
            password: some(),
            password_file: Some("f".into()),
            password_command: some(),
            inbox: some(),
            sent: some(),
            drafts: some(),
            tracked_folders: Some(vec![]),
            folder_regarding: Some(Default::default()),
            rescan_interval: some(),
            poll_interval: some(),
        };
        assert_eq!(keys_of(json!(imap)), described(imap_keys()));
        let dav = DavSection {
            contacts: some(),
            calendar: some(),
            tasks: some(),
            server: some(),
            poll_interval: some(),
            username: some(),
            password: some(),
            password_file: Some("f".into()),
            password_command: some(),
        };
        assert_eq!(keys_of(json!(dav)), described(dav_keys()));
    }
}
