//! The server's OpenAPI 3.1 description: the handlers' annotations
//! (`#[utoipa::path]`) and the wire types' derived schemas, with this
//! header. Checked into `docs/api/server.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cloister messaging server",
        description = "Stores and routes ciphertext; every error is `{error, message}` (ErrorBody) with its status.",
    ),
    components(schemas(cloister_proto::ErrorBody)),
    modifiers(&Security)
)]
struct Doc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what.to_owned()))
                    .build(),
            )
        };
        c.add_security_scheme(
            "session",
            bearer("a session token from POST /v1/session (device signature)"),
        );
        c.add_security_scheme(
            "operator",
            bearer("the operator token (the server's data directory, operator.token)"),
        );
    }
}

/// The description's header, before the routes add their paths.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    Doc::openapi()
}
