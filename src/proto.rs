//! Generated code for the AGS wire protos in `proto/` (built by `build.rs`).

#![allow(clippy::all, missing_docs)]

pub mod iam {
    pub mod account {
        pub mod v1 {
            tonic::include_proto!("accelbyte.iam.account.v1");
        }
    }
}

pub mod social {
    pub mod statistic {
        pub mod v1 {
            tonic::include_proto!("accelbyte.social.statistic.v1");
        }
    }
}

/// The descriptor set that gRPC server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ags_descriptor");
