//! Secure by default, in the library too: no JWT secret needs `development_mode()`, and
//! development mode serves on loopback only unless `allow_unauthenticated()` is said.

use std::net::SocketAddr;

use bridge_server::config::ConfigError;
use bridge_server::{BuildError, Server, ServerConfig, ServerError};

use crate::support::{SECRET, TestServer};

fn with_secret() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.into());
    config
}

#[tokio::test]
async fn a_server_without_a_secret_is_not_built_unless_development_mode_is_said() {
    let built = Server::builder(ServerConfig::default()).build();
    assert_eq!(built.err(), Some(BuildError::NoJwtSecret));

    let both = Server::builder(with_secret()).development_mode().build();
    assert_eq!(both.err(), Some(BuildError::DevelopmentModeWithSecret));

    let mut short = ServerConfig::default();
    short.jwt_secret = Some("too short".into());
    let built = Server::builder(short).build();
    assert_eq!(
        built.err(),
        Some(BuildError::Config(ConfigError::ShortJwtSecret { bytes: 9 }))
    );

    assert!(Server::builder(with_secret()).build().is_ok());
    assert!(
        Server::builder(ServerConfig::default())
            .development_mode()
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn development_mode_refuses_to_serve_on_a_listener_that_is_not_loopback() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = server.serve(listener, std::future::pending()).await;
    match served {
        Err(ServerError::UnauthenticatedListener(refused)) => assert_eq!(refused, addr),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The same check for an application that serves the router itself.
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let anywhere: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let loopback6: SocketAddr = "[::1]:8080".parse().unwrap();
    assert!(matches!(
        server.check_listener(anywhere),
        Err(ServerError::UnauthenticatedListener(_))
    ));
    assert!(server.check_listener(loopback).is_ok());
    assert!(server.check_listener(loopback6).is_ok());
    let authenticated = Server::builder(with_secret()).build().unwrap();
    assert!(authenticated.check_listener(anywhere).is_ok());
}

#[tokio::test]
async fn allow_unauthenticated_lets_development_mode_serve_anywhere() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = TestServer::start_on(listener, ServerConfig::default(), |b| {
        b.allow_unauthenticated()
    });
    let client = TestServer::client_for(SocketAddr::from(([127, 0, 0, 1], port)));
    let (status, _) = client.get("/healthz").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn an_authenticated_server_serves_anywhere() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = TestServer::start_on(listener, with_secret(), |b| b);
    let client = TestServer::client_for(SocketAddr::from(([127, 0, 0, 1], port)));
    let (status, _) = client.get("/healthz").await;
    assert_eq!(status, 200);
    server.stop().await;
}
