//! Origins for the tests: an HTTP file server with ranges and nginx-style
//! JSON listings, moto's S3 behind a counting TCP proxy, and the dataset
//! generator and tree comparison the tests verify copies with.

pub mod dataset;
pub mod http;
pub mod proxy;
pub mod s3;

pub use dataset::{
    DatasetSpec, FileDigest, PlannedFile, TreeDiff, TreeDigest, assert_trees_identical,
    compare_trees, generate_dataset, tree_digest,
};
pub use http::{HttpOrigin, OriginStats, fetch_stats, reset_stats};
pub use proxy::TcpProxy;
pub use s3::{S3Origin, S3OriginSpec, s3_store};
