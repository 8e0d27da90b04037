//! The KM's OpenAPI 3.1 description: the handlers' annotations and the
//! wire types' derived schemas, with this header. Checked into
//! `docs/api/km.json`.

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cloister Key Manager",
        description = "The tenant's Key Manager: enrolment, signed device requests, deny lists, KM-to-KM exchange. Requests are authenticated by signatures over their bodies (docs/protocol.md), not by headers; every error is `{error, message}` (ErrorBody) with its status.",
    ),
    components(schemas(cloister_proto::ErrorBody, cloister_proto::km::RequestBody))
)]
struct Doc;

/// The description's header, before the routes add their paths.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    Doc::openapi()
}
