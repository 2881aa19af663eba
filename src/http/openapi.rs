//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::OpenApi;

use super::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fsdb",
        description = "An embedded time-series feature database: the same feature values in training and serving."
    ),
    paths(
        handlers::ingest,
        handlers::features,
        handlers::query,
        handlers::training_set,
        handlers::registry,
        handlers::apply,
        handlers::remove_feature,
        handlers::health,
        handlers::metrics,
        handlers::openapi,
    ),
    components(schemas(
        handlers::ErrorBody,
        handlers::AppendResponse,
        handlers::FeatureValues,
        handlers::QueryResponse,
        handlers::QueryRequest,
        handlers::TrainingSetRequest,
        handlers::ApplyResponse,
        handlers::RemoveResponse,
        handlers::Health,
    ))
)]
struct ApiDoc;

/// The document, with the constraints the annotations cannot express added: event batches
/// and spines are non-empty, spine rows need `entity` and `ts`, definitions are non-empty.
pub(crate) fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let events = &mut doc["paths"]["/v1/streams/{stream}/events"]["post"]["requestBody"];
    events["required"] = true.into();
    events["content"]["application/json"]["schema"]["minItems"] = 1.into();
    events["content"]["application/x-ndjson"]["schema"]["minLength"] = 1.into();
    let registry = &mut doc["paths"]["/v1/registry"]["post"]["requestBody"];
    registry["required"] = true.into();
    for text in ["application/toml", "text/plain"] {
        registry["content"][text]["schema"]["minLength"] = 1.into();
    }
    let spine_row = &mut doc["components"]["schemas"]["SpineRow"];
    spine_row["required"] = serde_json::json!(["entity", "ts"]);
    doc["components"]["schemas"]["EntityInput"]["oneOf"][0]["minLength"] = 1.into();
    doc
}
