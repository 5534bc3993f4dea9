//! `synos-test-call SOCKET METHOD BASE64`: one unary gRPC call with a raw protobuf payload, for
//! system tests that must call as another local user (run through `runuser`, since the kernel
//! tells daemons who calls by the process at the other end of the socket). Prints `OK <base64
//! reply>` or `ERR <gRPC code number> <message>` and exits 0; a usage error exits 2.

use std::io::Write as _;
use std::path::PathBuf;

use base64::Engine as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [socket, method, body] = arguments.as_slice() else {
        eprintln!("usage: synos-test-call SOCKET METHOD BASE64");
        return std::process::ExitCode::from(2);
    };
    let Ok(body) = base64::engine::general_purpose::STANDARD.decode(body) else {
        eprintln!("synos-test-call: the payload is not base64");
        return std::process::ExitCode::from(2);
    };
    // The generated method paths are 'static, and this process makes one call.
    let method: &'static str = Box::leak(method.clone().into_boxed_str());
    let line = match synos_integration_tests::call_raw(&PathBuf::from(socket), method, body).await {
        Ok(reply) => format!(
            "OK {}",
            base64::engine::general_purpose::STANDARD.encode(reply)
        ),
        Err(status) => format!(
            "ERR {} {}",
            i32::from(status.code()),
            status.message().replace('\n', " ")
        ),
    };
    let _ = writeln!(std::io::stdout(), "{line}");
    std::process::ExitCode::SUCCESS
}
