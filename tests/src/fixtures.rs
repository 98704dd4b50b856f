//! Fixtures the end-to-end test files share: the bundled demo data set, the real server on 127.0.0.1 (port 0
//! for both listeners) and a gRPC channel to it. (The tests that run the `chamfer` binary live in cli/tests,
//! where cargo guarantees it: `CARGO_BIN_EXE_chamfer`.)
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chamfer_data::dataset::Dataset;
use chamfer_proto::v1 as pb;
use chamfer_server::config::Settings;
use chamfer_server::serve::{start, Server};
use tonic::transport::Channel;
use tonic::Code;

/// The bundled demo data set's folder (`data/demo`: 300 manpages passages, 50 queries, 128-d f16 tokens).
pub fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/demo")
}

/// The bundled demo data set, opened once per test binary.
pub fn demo_dataset() -> &'static Dataset {
    static DS: OnceLock<Dataset> = OnceLock::new();
    DS.get_or_init(|| {
        let dir = demo_dir();
        Dataset::open(&dir)
            .unwrap_or_else(|e| panic!("cannot open the demo data set {}: {e}", dir.display()))
    })
}

/// `data` (row-major, `dim` values a token) as f16 protobuf tokens.
pub fn f16_tokens(data: &[f32], dim: usize) -> pb::Tokens {
    let bits: Vec<u16> = data
        .iter()
        .map(|v| half::f16::from_f32(*v).to_bits())
        .collect();
    chamfer_proto::tokens::pack_f16_bits(&bits, dim)
}

/// Starts the real server (`chamfer_server::serve::start`, the wiring `chamfer serve` uses) on `dir`, with both
/// listeners on 127.0.0.1 port 0 and 2 search threads; `tweak` changes any setting before it starts.
pub async fn start_server(dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Server {
    let mut s = Settings {
        data_dir: dir.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        search_threads: 2,
        ..Settings::default()
    };
    tweak(&mut s);
    start(s).await.expect("server starts")
}

/// A connected gRPC channel to `server`.
pub async fn grpc_channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addrs().grpc))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The code of a gRPC answer (`Code::Ok` for a success).
pub fn code_of<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}
