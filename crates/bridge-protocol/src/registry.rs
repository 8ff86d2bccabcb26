//! The device-type registry: which BLE service and characteristics each type of device uses.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use crate::DeviceType;

/// The Bluetooth base UUID, `00000000-0000-1000-8000-00805f9b34fb`, into which 16- and 32-bit
/// short UUIDs are expanded.
pub const BLUETOOTH_BASE_UUID: Uuid = Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb);

/// The BLE UUIDs of one device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceConfig {
    /// GATT service UUID.
    pub service_uuid: Uuid,
    /// Characteristic written with the command payload.
    pub write_uuid: Uuid,
    /// Characteristic whose notifications carry the reply.
    pub listen_uuid: Uuid,
}

impl DeviceConfig {
    /// The built-in example type `smart-lock` (PROTOCOL.md 3.1): service `fff0`, write `fff1`,
    /// listen `fff2`.
    pub const SMART_LOCK: Self = Self {
        service_uuid: expand_short_uuid(0xfff0),
        write_uuid: expand_short_uuid(0xfff1),
        listen_uuid: expand_short_uuid(0xfff2),
    };
}

/// Expands a 16- or 32-bit short UUID with the Bluetooth base UUID.
pub const fn expand_short_uuid(short: u32) -> Uuid {
    Uuid::from_u128(BLUETOOTH_BASE_UUID.as_u128() | ((short as u128) << 96))
}

/// Parses a UUID in full form (`0000fff0-0000-1000-8000-00805f9b34fb`, any case, with or
/// without hyphens) or as a 16-bit (`fff0`) or 32-bit (`0000fff0`) short form, optionally
/// prefixed by `0x`.
pub fn parse_ble_uuid(s: &str) -> Result<Uuid, RegistryError> {
    let t = s.trim();
    let short = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if (short.len() == 4 || short.len() == 8) && short.bytes().all(|b| b.is_ascii_hexdigit()) {
        let value = u32::from_str_radix(short, 16).map_err(|_| RegistryError::BadUuid(s.into()))?;
        return Ok(expand_short_uuid(value));
    }
    Uuid::parse_str(t).map_err(|_| RegistryError::BadUuid(s.into()))
}

/// Why the registry refused a configuration or a lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A lookup for a type that is not registered.
    #[error("unknown device type `{0}`")]
    UnknownType(String),
    /// No type was named and the registry has no default.
    #[error("no device type given and the registry has no default type")]
    NoDefault,
    /// A UUID that is neither a full UUID nor a 16- or 32-bit short form.
    #[error("`{0}` is not a UUID (full form, or 16-bit/32-bit short form such as `fff0`)")]
    BadUuid(String),
    /// A type name that breaks the naming rule.
    #[error("bad device type name `{name}`: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The default type is not one of the registered types.
    #[error("default type `{0}` is not defined in [types]")]
    DefaultNotDefined(String),
    /// The TOML text could not be read.
    #[error("device-type registry is not valid: {0}")]
    Toml(String),
    /// The file could not be read.
    #[error("cannot read device-type registry {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Device type → [`DeviceConfig`], with an optional default type.
///
/// Loaded from TOML:
///
/// ```toml
/// default_type = "smart-lock"
///
/// [types.smart-lock]
/// service_uuid = "fff0"          # 16-bit short form
/// write_uuid = "0000fff1"        # 32-bit short form
/// listen_uuid = "0000fff2-0000-1000-8000-00805f9b34fb"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigRegistry {
    types: BTreeMap<DeviceType, DeviceConfig>,
    /// The default type with a copy of its config (kept equal to its entry in `types` by
    /// `insert`), so that a command naming no type costs no map lookup.
    default: Option<(DeviceType, DeviceConfig)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    default_type: Option<String>,
    #[serde(default)]
    types: BTreeMap<String, TypeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeEntry {
    service_uuid: String,
    write_uuid: String,
    listen_uuid: String,
}

impl ConfigRegistry {
    /// An empty registry with no default type.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry the server uses when none is configured: the single type `smart-lock`
    /// with the UUIDs of PROTOCOL.md 3.1, as the default.
    pub fn example() -> Self {
        let name = DeviceType::new("smart-lock").unwrap_or_else(|_| unreachable!("valid name"));
        let mut registry = Self::new();
        registry.insert(name.clone(), DeviceConfig::SMART_LOCK);
        registry.default = Some((name, DeviceConfig::SMART_LOCK));
        registry
    }

    /// Adds or replaces a type.
    pub fn insert(&mut self, name: DeviceType, config: DeviceConfig) -> &mut Self {
        if let Some((default, copy)) = &mut self.default
            && *default == name
        {
            *copy = config;
        }
        self.types.insert(name, config);
        self
    }

    /// Sets the default type, which must already be registered.
    pub fn set_default(&mut self, name: &str) -> Result<&mut Self, RegistryError> {
        let (key, config) = self
            .types
            .get_key_value(name)
            .ok_or_else(|| RegistryError::DefaultNotDefined(name.into()))?;
        self.default = Some((key.clone(), *config));
        Ok(self)
    }

    /// Parses the TOML form shown on the type.
    pub fn from_toml_str(text: &str) -> Result<Self, RegistryError> {
        let file: RegistryFile =
            toml::from_str(text).map_err(|e| RegistryError::Toml(e.to_string()))?;
        let mut registry = Self::new();
        for (name, entry) in file.types {
            let key = DeviceType::new(&name).map_err(|e| RegistryError::BadName {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            registry.insert(
                key,
                DeviceConfig {
                    service_uuid: parse_ble_uuid(&entry.service_uuid)?,
                    write_uuid: parse_ble_uuid(&entry.write_uuid)?,
                    listen_uuid: parse_ble_uuid(&entry.listen_uuid)?,
                },
            );
        }
        if let Some(default) = file.default_type {
            registry.set_default(&default)?;
        }
        Ok(registry)
    }

    /// Reads and parses a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text)
    }

    /// The config of a type.
    pub fn get(&self, name: &str) -> Result<&DeviceConfig, RegistryError> {
        self.types
            .get(name)
            .ok_or_else(|| RegistryError::UnknownType(name.into()))
    }

    /// Resolves an optional type name: the named type, or the default when `None`. Returns
    /// the type's canonical name with its config.
    pub fn resolve(
        &self,
        name: Option<&str>,
    ) -> Result<(&DeviceType, &DeviceConfig), RegistryError> {
        let Some(name) = name else {
            return self
                .default
                .as_ref()
                .map(|(name, config)| (name, config))
                .ok_or(RegistryError::NoDefault);
        };
        self.types
            .get_key_value(name)
            .ok_or_else(|| RegistryError::UnknownType(name.into()))
    }

    /// The default type, if any.
    pub fn default_type(&self) -> Option<&DeviceType> {
        self.default.as_ref().map(|(name, _)| name)
    }

    /// Every type with its config, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceType, &DeviceConfig)> {
        self.types.iter()
    }

    /// Number of registered types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when no type is registered.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_resolves_to_its_current_config_whatever_changed_it() {
        let config = |n: u128| DeviceConfig {
            service_uuid: Uuid::from_u128(n),
            write_uuid: Uuid::from_u128(n + 1),
            listen_uuid: Uuid::from_u128(n + 2),
        };
        let name = |s: &str| DeviceType::new(s).unwrap();
        let mut registry = ConfigRegistry::new();
        assert_eq!(registry.resolve(None), Err(RegistryError::NoDefault));
        registry
            .insert(name("a"), config(10))
            .insert(name("b"), config(20));
        registry.set_default("a").unwrap();
        let same = |registry: &ConfigRegistry| {
            assert_eq!(
                registry.resolve(None),
                registry.resolve(registry.default_type().map(DeviceType::as_str))
            );
        };
        assert_eq!(registry.resolve(None), Ok((&name("a"), &config(10))));
        same(&registry);
        // Replacing the default's config is seen through the default, another type's is not.
        registry
            .insert(name("a"), config(30))
            .insert(name("b"), config(40));
        assert_eq!(registry.resolve(None), Ok((&name("a"), &config(30))));
        same(&registry);
        registry.set_default("b").unwrap();
        assert_eq!(registry.resolve(None), Ok((&name("b"), &config(40))));
        same(&registry);
        assert_eq!(
            registry.set_default("c").map(|_| ()),
            Err(RegistryError::DefaultNotDefined("c".into()))
        );
        assert_eq!(
            registry.resolve(None),
            Ok((&name("b"), &config(40))),
            "a refused default changes nothing"
        );
        let example = ConfigRegistry::example();
        same(&example);
        assert_eq!(example.resolve(None).unwrap().1, &DeviceConfig::SMART_LOCK);
    }

    #[test]
    fn short_forms_expand_with_the_bluetooth_base_uuid() {
        let full = Uuid::parse_str("0000fff0-0000-1000-8000-00805f9b34fb").unwrap();
        assert_eq!(parse_ble_uuid("fff0").unwrap(), full);
        assert_eq!(parse_ble_uuid("FFF0").unwrap(), full);
        assert_eq!(parse_ble_uuid("0xfff0").unwrap(), full);
        assert_eq!(parse_ble_uuid("0000fff0").unwrap(), full);
        assert_eq!(
            parse_ble_uuid("0000FFF0-0000-1000-8000-00805F9B34FB").unwrap(),
            full
        );
        assert_eq!(
            parse_ble_uuid("12345678").unwrap().to_string(),
            "12345678-0000-1000-8000-00805f9b34fb"
        );
        assert!(matches!(
            parse_ble_uuid("fff"),
            Err(RegistryError::BadUuid(_))
        ));
        assert!(matches!(
            parse_ble_uuid("not-a-uuid"),
            Err(RegistryError::BadUuid(_))
        ));
    }

    #[test]
    fn example_registry_has_smart_lock_as_default() {
        let r = ConfigRegistry::example();
        let (name, config) = r.resolve(None).unwrap();
        assert_eq!(name.as_str(), "smart-lock");
        assert_eq!(
            config.write_uuid.to_string(),
            "0000fff1-0000-1000-8000-00805f9b34fb"
        );
    }

    #[test]
    fn loads_from_toml_with_every_uuid_form() {
        let r = ConfigRegistry::from_toml_str(
            r#"
            default_type = "thermo"
            [types.smart-lock]
            service_uuid = "fff0"
            write_uuid = "0000fff1"
            listen_uuid = "0000fff2-0000-1000-8000-00805f9b34fb"
            [types.thermo]
            service_uuid = "181a"
            write_uuid = "2a6e"
            listen_uuid = "2a6f"
            "#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.get("smart-lock").unwrap(), &DeviceConfig::SMART_LOCK);
        assert_eq!(r.resolve(None).unwrap().0.as_str(), "thermo");
    }

    #[test]
    fn unknown_types_and_bad_files_are_clear_errors() {
        let r = ConfigRegistry::example();
        assert_eq!(
            r.get("kettle"),
            Err(RegistryError::UnknownType("kettle".into()))
        );
        assert_eq!(
            ConfigRegistry::new().resolve(None),
            Err(RegistryError::NoDefault)
        );
        assert!(matches!(
            ConfigRegistry::from_toml_str("default_type = \"x\""),
            Err(RegistryError::DefaultNotDefined(_))
        ));
        assert!(matches!(
            ConfigRegistry::from_toml_str(
                "[types.a]\nservice_uuid = \"zz\"\nwrite_uuid = \"fff1\"\nlisten_uuid = \"fff2\""
            ),
            Err(RegistryError::BadUuid(_))
        ));
        assert!(matches!(
            ConfigRegistry::from_toml_str("[types.a]\nservice_uuid = \"fff0\""),
            Err(RegistryError::Toml(_))
        ));
        assert!(matches!(
            ConfigRegistry::from_toml_file("/nonexistent/registry.toml"),
            Err(RegistryError::Io { .. })
        ));
    }
}
