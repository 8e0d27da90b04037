//! OpenAPI schemas of the types with their own JSON form (ids as strings,
//! bytes as base64). The other wire types derive theirs.

use crate::b64::{Bytes, Fixed};
use crate::{DeviceId, MessageId, RoomId, TenantId, UserId};
use std::borrow::Cow;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use utoipa::{PartialSchema, ToSchema};

fn string(pattern: Option<&str>, description: &str, base64: bool) -> RefOr<Schema> {
    let mut b = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description.to_owned()));
    if let Some(p) = pattern {
        b = b.pattern(Some(p.to_owned()));
    }
    if base64 {
        b = b.content_encoding("base64");
        b = b.format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)));
    }
    RefOr::T(Schema::Object(b.build()))
}

macro_rules! string_schema {
    ($t:ty, $name:literal, $pattern:expr, $doc:literal) => {
        impl PartialSchema for $t {
            fn schema() -> RefOr<Schema> {
                string($pattern, $doc, false)
            }
        }
        impl ToSchema for $t {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_schema!(
    TenantId,
    "TenantId",
    Some("^[a-z0-9._-]{1,64}$"),
    "A customer firm"
);
string_schema!(
    UserId,
    "UserId",
    Some("^[a-z0-9._-]{1,64}@[a-z0-9._-]{1,64}$"),
    "A person, name@tenant"
);
string_schema!(
    DeviceId,
    "DeviceId",
    Some("^[0-9a-f]{32}$"),
    "A device (hex of 16 bytes)"
);
string_schema!(
    RoomId,
    "RoomId",
    Some("^[0-9a-f]{32}$"),
    "A room (hex of 16 bytes)"
);
string_schema!(
    MessageId,
    "MessageId",
    Some("^[0-9a-f]{32}$"),
    "A message (hex of 16 bytes)"
);

impl PartialSchema for Bytes {
    fn schema() -> RefOr<Schema> {
        string(None, "Bytes, base64 (standard alphabet, padded)", true)
    }
}
impl ToSchema for Bytes {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Bytes")
    }
}

impl<const N: usize> PartialSchema for Fixed<N> {
    fn schema() -> RefOr<Schema> {
        string(None, "A fixed number of bytes, base64", true)
    }
}
impl<const N: usize> ToSchema for Fixed<N> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("FixedBytes")
    }
}

/// Raw bytes of a request or response body (`application/octet-stream`),
/// for the API descriptions.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                .build(),
        ))
    }
}
impl ToSchema for Binary {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Binary")
    }
}
