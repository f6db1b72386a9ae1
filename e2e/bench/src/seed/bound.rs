//! The bound a seed is measured against: Kumar–Ross T*.

/// Kumar & Ross (2006): no schedule distributes a file of `file_bytes`
/// from a server with upload `server_upload` to peers with uploads
/// `peer_uploads` and downloads `peer_downloads` (bytes/s) faster than
/// `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` seconds.
pub fn kumar_ross_bound(
    file_bytes: f64,
    server_upload: f64,
    peer_uploads: &[f64],
    peer_downloads: &[f64],
) -> f64 {
    let n = peer_downloads.len() as f64;
    let d_min = peer_downloads.iter().copied().fold(f64::INFINITY, f64::min);
    let total_upload = server_upload + peer_uploads.iter().sum::<f64>();
    (file_bytes / server_upload)
        .max(file_bytes / d_min)
        .max(n * file_bytes / total_upload)
}

/// Bytes/s of a link of `mbit` Mbit/s (`tc`'s mbit is 10^6 bit/s).
pub fn mbit_to_bytes_per_s(mbit: u32) -> f64 {
    f64::from(mbit) * 1e6 / 8.0
}

/// T* of the bench topology: `nodes` peers and the origin, every link
/// `link_mbit` both ways.
pub fn bound_for_uniform_links(dataset_bytes: u64, nodes: usize, link_mbit: u32) -> f64 {
    let rate = mbit_to_bytes_per_s(link_mbit);
    kumar_ross_bound(
        dataset_bytes as f64,
        rate,
        &vec![rate; nodes],
        &vec![rate; nodes],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn the_bound_is_the_largest_of_the_three_terms() {
        // Symmetric links: the server's upload (= a peer's download) binds.
        assert!(close(
            kumar_ross_bound(1000.0, 10.0, &[10.0; 4], &[10.0; 4]),
            100.0
        ));
        // Slow peer uploads: the aggregate upload binds, N·F/(u_s + Σu_i).
        assert!(close(
            kumar_ross_bound(1000.0, 10.0, &[1.0; 10], &[100.0; 10]),
            10.0 * 1000.0 / 20.0
        ));
        // One slow download binds.
        assert!(close(
            kumar_ross_bound(1000.0, 100.0, &[100.0; 3], &[100.0, 5.0, 100.0]),
            200.0
        ));
        // Fast peers, slow server.
        assert!(close(
            kumar_ross_bound(1000.0, 2.0, &[100.0; 3], &[100.0; 3]),
            500.0
        ));
    }

    #[test]
    fn the_bench_topology_bound_is_one_dataset_over_the_link() {
        // 1 GiB over 200 Mbit/s (25 MB/s), any N.
        for n in [2, 4, 8, 16] {
            assert!(close(
                bound_for_uniform_links(1 << 30, n, 200),
                (1u64 << 30) as f64 / 25e6
            ));
        }
    }
}
