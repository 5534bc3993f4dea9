//! Generated gRPC messages, clients and servers for every SynOS API, one module per package.
//!
//! The code under `src/generated/` is produced from `proto/` by `scripts/regenerate-proto.sh`
//! and checked in, so building SynOS never needs `protoc`; CI fails when it drifts.

/// Generated code follows protobuf naming, not ours; lints on it would only be noise.
macro_rules! generated_package {
    ($file:literal) => {
        #[allow(clippy::all, clippy::pedantic, unreachable_pub, unused_qualifications)]
        mod generated {
            include!(concat!("generated/", $file));
        }
        pub use generated::*;
    };
}

/// `synos.admin.v1`: the introspection service every daemon serves.
pub mod admin {
    /// Version 1 of the admin API.
    pub mod v1 {
        generated_package!("synos.admin.v1.rs");
    }
}

/// `synos.llm.v1`: the LLM router's API.
pub mod llm {
    /// Version 1 of the router API.
    pub mod v1 {
        generated_package!("synos.llm.v1.rs");
    }
}

/// `synos.memory.v1`: the memory daemon's API.
pub mod memory {
    /// Version 1 of the memory API.
    pub mod v1 {
        generated_package!("synos.memory.v1.rs");
    }
}

/// `synos.hwaccel.v1`: the hardware daemon's API.
pub mod hwaccel {
    /// Version 1 of the hardware API.
    pub mod v1 {
        generated_package!("synos.hwaccel.v1.rs");
    }
}

/// `synos.policy.v1`: the policy daemon's API.
pub mod policy {
    /// Version 1 of the policy API.
    pub mod v1 {
        generated_package!("synos.policy.v1.rs");
    }
}

/// `synos.doctor.v1`: the doctor's API.
pub mod doctor {
    /// Version 1 of the doctor API.
    pub mod v1 {
        generated_package!("synos.doctor.v1.rs");
    }
}

/// Encoded `FileDescriptorSet` of every SynOS schema (with imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/descriptor_set.bin");
