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
        handlers::Health,
    ))
)]
struct ApiDoc;

pub(crate) fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}
