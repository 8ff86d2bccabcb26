//! The conformance suite, run against every backend enabled by features.

#[cfg(feature = "memory")]
mod memory_harness {
    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{MemoryStore, StoreConfig, StoreError};

    pub(crate) struct MemoryHarness;

    #[async_trait]
    impl Harness for MemoryHarness {
        type Store = MemoryStore;
        async fn open(&self, config: StoreConfig) -> Result<MemoryStore, StoreError> {
            Ok(MemoryStore::new(config))
        }
        async fn cleanup(&self) {}
    }

    #[allow(clippy::unused_async)] // the suite awaits every harness constructor
    pub(crate) async fn new() -> MemoryHarness {
        MemoryHarness
    }
}

#[cfg(feature = "memory")]
bridge_queue::conformance_tests!(memory, crate::memory_harness::new());
