//! What the gateway and the publisher run on, and nothing of either product: settings
//! layering ([`settings`]), logging ([`telemetry`]), the shutdown signal ([`shutdown`]), the
//! admin listener ([`admin`]), LoopBack-shaped HTTP errors ([`ApiError`]) and shared HTTP
//! handlers ([`http`]), request limits and framing checks ([`limits`], [`framing`]), JWT
//! auth ([`auth`]), the OpenAPI document's shared parts and its route ([`openapi`]), and
//! Redis targets with connections that replace themselves after a timeout
//! ([`redis_link`]). Random spreads for timers: [`jitter`].
//!
//! What it does not own: records, stores and the REST API (the publisher's), SSE,
//! subscriptions and replay (the gateway's).

pub mod admin;
pub mod auth;
pub mod error;
pub mod framing;
pub mod http;
pub mod jitter;
pub mod limits;
pub mod openapi;
pub mod redis_link;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use error::{ApiError, FramingError, HttpError};
pub use redis_link::{ClusterLink, Link, RedisConnection, RedisTarget, SingleLink};
