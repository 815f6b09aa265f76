//! The gateway's configuration sections (`[[providers]]`, `[routes.*]`, `[breaker]`,
//! `[server]`, `[fusion]`) as `lumina.toml` gives them: parsed, then resolved into the route
//! table and the Fusion panel, as a gateway does at start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lumina_gateway::config::GatewayConfig;
use lumina_gateway::engine::fusion::Fusion;
use lumina_gateway::routing::table::RouteTable;

fuzz_target!(|data: &[u8]| {
    lumina_gateway::providers::install_crypto_provider();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<GatewayConfig>(text) else {
        return;
    };
    if let Ok(routes) = RouteTable::build(&config, |_| Some("sk-fuzz".into())) {
        let _ = Fusion::resolve(&config.fusion, &routes);
    }
});
