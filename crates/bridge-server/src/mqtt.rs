//! Bridges over MQTT (PROTOCOL.md 6): `bridge-mqtt`'s front on this server's public seams.

use bridge_mqtt::{HelloRefused, MqttBridges, MqttConfig, MqttError};

use crate::{Server, ServerConfig};

/// The MQTT settings of a [`ServerConfig`] (`--mqtt`, `--mqtt-prefix`), with a client id
/// that is stable across restarts of this node (`{prefix}-server-{node id}`), so that the
/// broker keeps the server's persistent session; `None` without `--mqtt`.
pub fn mqtt_config(config: &ServerConfig) -> Option<MqttConfig> {
    let url = config.mqtt.clone()?;
    let client_id = MqttConfig::node_client_id(&config.mqtt_prefix, config.node_id().as_str());
    Some(
        MqttConfig::new(url)
            .prefix(config.mqtt_prefix.clone())
            .client_id(client_id),
    )
}

/// Serves bridges over the MQTT broker of `config` beside `server`'s WebSocket, through the
/// same seams an application's own transport would use: each session is served by
/// [`LocalHub::serve`](bridge_hub::LocalHub::serve) (`server.hub().local()`), and each
/// `hello` is authenticated by [`Server::authenticate_hello`], the WebSocket upgrade's own
/// rules. Stop it with [`MqttBridges::stop`] after [`Server::serve`] returned (the
/// server's shutdown closes the sessions, whose bridges are told to send `hello` again).
pub fn serve_mqtt(server: &Server, config: MqttConfig) -> Result<MqttBridges, MqttError> {
    let auth = server.clone();
    MqttBridges::start(config, server.hub().local().clone(), move |hello: &_| {
        auth.authenticate_hello(hello)
            .map_err(|error| HelloRefused::new(error.code(), error.to_string()))
    })
}
