//! `/api/openapi.json`: an OpenAPI 3.1 document built from the route table ([`super::table`]) and
//! the JSON Schemas the wire types derive (schemars, draft 2020-12, which OpenAPI 3.1 uses as is).

use std::sync::OnceLock;

use axum::response::IntoResponse;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::{Access, In, table};

pub use delegate_mcp::rest::{ErrorBody, ErrorEnvelope};

/// Failure statuses documented on every route that takes a token.
const ERRORS: [(u16, &str); 8] = [
    (
        400,
        "Invalid input (malformed JSON, unknown field, bad parameter)",
    ),
    (401, "Missing, invalid, expired or revoked token"),
    (
        403,
        "Your role does not allow this; or a cookie-authenticated change from another origin (`csrf`)",
    ),
    (404, "Unknown, or in a workspace you are not a member of"),
    (409, "The sandbox is busy or not running"),
    (413, "Body over 2 MiB"),
    (429, "A limit was reached"),
    (500, "Internal error (details in the server log)"),
];

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// `GET /api/openapi.json`: the document, so clients and tooling can generate bindings.
pub async fn serve() -> impl IntoResponse {
    axum::Json(document().clone())
}

fn build() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let error_ref = generator.subschema_for::<ErrorEnvelope>();

    let mut paths = Map::new();
    for route in table() {
        let mut parameters = Vec::new();
        for p in &route.params {
            parameters.push(json!({
                "name": p.name,
                "in": p.location.as_str(),
                "required": p.location == In::Path,
                "description": p.description,
                "schema": { "type": p.kind },
            }));
        }
        let mut responses = Map::new();
        for r in &route.replies {
            let content = match r.schema {
                Some(schema) => json!({ "application/json": { "schema": schema(&mut generator) } }),
                None if r.content_type.is_empty() => Value::Null,
                None => json!({ r.content_type: { "schema": { "type": "string" } } }),
            };
            let mut reply = json!({ "description": r.description });
            if !content.is_null() {
                reply["content"] = content;
            }
            if route.path.ends_with("/events") {
                reply["content"]["text/event-stream"] = json!({ "schema": { "type": "string" } });
            }
            responses.insert(r.status.to_string(), reply);
        }
        let mut operation = json!({
            "operationId": route.operation_id,
            "summary": route.summary,
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = route.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": body(&mut generator) } },
            });
        }
        match route.access {
            Access::Token => {
                operation["security"] = json!([{ "bearer": [] }]);
                for (status, description) in ERRORS {
                    operation["responses"][status.to_string()] = json!({
                        "description": description,
                        "content": { "application/json": { "schema": error_ref.clone() } },
                    });
                }
            }
            Access::Public => operation["security"] = json!([]),
        }
        let method = route.method.as_str().to_ascii_lowercase();
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "delegate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "delegate's REST API: delegate tasks to coding agents in sandboxes and watch them.",
        },
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An API token, `dlg_...`" },
            },
        },
        "security": [{ "bearer": [] }],
    })
}
