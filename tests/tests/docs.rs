//! Docs that cannot drift (issue 22 item 6): tables that describe code are pinned to that code. Here: the route
//! table in the module documentation of server/src/rest.rs against the routes the server serves (its OpenAPI
//! document is generated from the same route lists as its router). The README configuration and error tables
//! are pinned where their code lives (server/src/config/tests.rs, server/src/error.rs).
use std::collections::BTreeSet;

/// (METHOD, path) of every row of the route table in rest.rs's module documentation.
fn documented_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../../server/src/rest.rs");
    let mut rows = BTreeSet::new();
    let mut in_table = false;
    for line in src.lines().take_while(|l| l.starts_with("//!")) {
        let line = line.trim_start_matches("//!").trim();
        if line.starts_with("| method | path |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let path = cells[2].trim_matches('`');
        assert!(
            !path.contains('`') && !path.contains(','),
            "one route per row: {line}"
        );
        assert!(
            rows.insert((cells[1].to_owned(), path.to_owned())),
            "route listed twice: {line}"
        );
    }
    rows
}

#[test]
fn the_rest_route_table_is_the_served_routes() {
    let doc = serde_json::to_value(chamfer_server::rest::openapi_document()).unwrap();
    let mut served = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                served.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let documented = documented_routes();
    assert!(served.len() >= 20, "{served:?}");
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rest.rs's route table: missing {missing:?}, not served {extra:?}"
    );
}
