//! Generated types for Global Brain's own protocols.
//!
//! Only areas without a standard protocol get their own `.proto` (see `proto/` at the
//! repository root); queries speak Flight SQL and inference speaks KServe v2, whose messages are
//! declared here to its published wire format ([`inference`]).

/// `globalbrain.ingest.v1`: uploads, events and export.
pub mod ingest {
    pub mod v1 {
        tonic::include_proto!("globalbrain.ingest.v1");
    }
}

/// `globalbrain.query.v1`: named snapshots (queries themselves speak Flight SQL).
pub mod query {
    pub mod v1 {
        tonic::include_proto!("globalbrain.query.v1");
    }
}

/// `globalbrain.coordinator.v1`: loop sessions, feedback and outcomes.
pub mod coordinator {
    pub mod v1 {
        tonic::include_proto!("globalbrain.coordinator.v1");
    }
}

/// `globalbrain.models.v1`: pushing, listing and removing models in the repository.
pub mod models {
    pub mod v1 {
        tonic::include_proto!("globalbrain.models.v1");
    }
}

/// `inference`: KServe v2 / Open Inference Protocol, written to its published wire format.
pub mod inference {
    tonic::include_proto!("inference");

    /// The encoded file descriptor set of `inference` and `globalbrain.models.v1` (what an
    /// inference node serves), for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("inference_descriptor");
}

/// The encoded file descriptor set of every proto above, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("globalbrain_descriptor");
