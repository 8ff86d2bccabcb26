//! Decode and encode of the hot frames: `ble_response` (bridge → server) and `ble_write`
//! (server → bridge). Throughput in frames per second.
//!
//! Run: `cargo bench -p benches --bench codec`

use std::hint::black_box;

use bridge_protocol::{
    BleWrite, BridgeToServer, DeviceConfig, DeviceId, DeviceType, HexPayload, Limits, RequestId,
    ServerToBridge, TimeoutMs,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BLE_RESPONSE: &str = r#"{"type":"ble_response","requestId":"0123456789abcdef0123456789abcdef","deviceId":"lock-1","payload":"01aabbccddeeff00"}"#;

fn ble_write() -> ServerToBridge {
    let config = DeviceConfig::SMART_LOCK;
    ServerToBridge::BleWrite(BleWrite {
        request_id: RequestId::from_u128_hex(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        device_id: DeviceId::new("lock-1").expect("valid"),
        device_type: DeviceType::new("smart-lock").expect("valid"),
        service_uuid: config.service_uuid,
        write_uuid: config.write_uuid,
        listen_uuid: config.listen_uuid,
        payload: HexPayload::from_bytes(vec![0xaa, 0xbb, 0xcc, 0xdd]),
        timeout_ms: TimeoutMs::DEFAULT,
    })
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));

    group.bench_function("ble_response/decode", |b| {
        b.iter(|| BridgeToServer::decode(black_box(BLE_RESPONSE), &limits));
    });
    let response = BridgeToServer::decode(BLE_RESPONSE, &limits).expect("valid fixture");
    group.bench_function("ble_response/encode", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            black_box(&response).write_json(&mut buf);
            black_box(buf.len())
        });
    });

    let write = ble_write();
    group.bench_function("ble_write/encode", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            buf.clear();
            black_box(&write).write_json(&mut buf);
            black_box(buf.len())
        });
    });
    let write_json = write.to_json();
    group.bench_function("ble_write/decode", |b| {
        b.iter(|| ServerToBridge::decode(black_box(&write_json)));
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
