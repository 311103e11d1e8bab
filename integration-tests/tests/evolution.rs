//! Model evolution over the embedded cluster: two synthetic subjects with strong drift decode
//! with a fixed decoder; their outcomes refit it; the refit is pushed as version 2 with its
//! lineage, decodes in shadow, then for one of the two sessions (canary), and is promoted
//! when it beats its parent on the same trials. Every decision is stored and queryable.

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use gbrain_cli::client::Bearer;
use gbrain_cli::loop_sim::{self, Options};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_integration_tests::{ADMIN_TOKEN, ANALYST_TOKEN, OTHER_TENANT_TOKEN, Sandbox};
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::coordinator::v1::loop_service_client::LoopServiceClient;
use tonic::Code;

fn int(r: &arrow::array::RecordBatch, c: usize, row: usize) -> i64 {
    arrow::compute::cast(r.column(c), &DataType::Int64)
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(row)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refits_go_through_shadow_and_canary_to_promotion_with_their_lineage() {
    let sb = Sandbox::start().await;
    assert!(
        sb.models.is_some(),
        "the closed loop needs inference (ORT_DYLIB_PATH, which `cargo xtask test` sets)"
    );
    let admin = ClientArgs {
        server: sb.endpoint(),
        token: Some(ADMIN_TOKEN.to_string()),
        json: false,
        tls: Default::default(),
    };

    // Evolving a model pushes versions: the operator role only, and clear errors.
    let mut analyst = LoopServiceClient::with_interceptor(
        sb.channel().await,
        Bearer::new(Some(ANALYST_TOKEN)).unwrap(),
    );
    let e = analyst
        .evolve(pb::EvolveRequest {
            model: loop_sim::DEFAULT_MODEL.into(),
            current_version: 1,
            policy: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut operator = LoopServiceClient::with_interceptor(
        sb.channel().await,
        Bearer::new(Some(ADMIN_TOKEN)).unwrap(),
    );
    let e = operator
        .evolve(pb::EvolveRequest {
            model: loop_sim::DEFAULT_MODEL.into(),
            current_version: 0,
            policy: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("current_version"), "{e:?}");

    let report = loop_sim::simulate(
        &admin,
        &Options {
            sessions: 2,
            seconds: 300.0,
            drift: 0.25,
            seed: 40,
            model: None,
            adaptation: pb::adaptation::Mode::Off,
            rate: 0.0,
            realtime: false,
            // Debug build on a loaded machine.
            deadline_ms: 5000.0,
            evolve: Some(loop_sim::simulation_policy()),
            coordinator: None,
        },
    )
    .await
    .unwrap();
    print!("{}", report.text());
    let evolution = report.evolution.clone().unwrap();
    let decisions = &evolution.decisions;
    assert_eq!(report.sessions.iter().map(|s| s.errors).sum::<u64>(), 0);

    // The first refit: version 2 from version 1, with its lineage.
    let fit = &decisions[0];
    assert_eq!(
        (fit.action.as_str(), fit.version, fit.parent_version),
        ("fit", 2, 1)
    );
    let lineage: serde_json::Value = serde_json::from_str(&fit.evidence_json).unwrap();
    let snapshot = lineage["snapshot"].as_str().unwrap().to_string();
    assert_eq!(snapshot, "loop_synthetic_mi_lda_v2");
    let data = lineage["data"].as_array().unwrap();
    assert!(!data.is_empty());
    let trained: u64 = data.iter().map(|d| d["windows"].as_u64().unwrap()).sum();
    assert_eq!(trained, lineage["train_windows"].as_u64().unwrap());
    assert!(lineage["heldout_windows"].as_u64().unwrap() > 0);

    // The refit beat its parent where it counted: promoted on canary trials, where it
    // decoded the same windows as its parent.
    let promoted = decisions
        .iter()
        .find(|d| d.action == "promote")
        .unwrap_or_else(|| panic!("no promotion: {decisions:#?}"));
    let evidence: serde_json::Value = serde_json::from_str(&promoted.evidence_json).unwrap();
    let (cand, cur) = (
        evidence["candidate_accuracy"].as_f64().unwrap(),
        evidence["current_accuracy"].as_f64().unwrap(),
    );
    println!(
        "promoted v{} over v{}: {:.1}% vs {:.1}% on {} windows of {} canary trials",
        promoted.version,
        promoted.parent_version,
        100.0 * cand,
        100.0 * cur,
        evidence["windows"],
        evidence["trials"]
    );
    assert!(cand >= cur + 0.02, "{evidence}");
    let canary = decisions
        .iter()
        .position(|d| d.action == "canary" && d.version == promoted.version)
        .expect("a canary before the promotion");
    assert!(
        canary
            < decisions
                .iter()
                .position(|d| d.action == "promote")
                .unwrap()
    );
    assert!(evolution.current_version >= promoted.version);
    // Sessions decoded with the promoted version afterwards.
    let last = report.versions_by_minute();
    assert!(
        last.last()
            .unwrap()
            .split('+')
            .any(|v| v.parse::<u64>().unwrap() >= promoted.version),
        "{last:?}"
    );

    // The repository serves the current version (and the last refit) and keeps the rest.
    let mut models = gbrain_cli::models::connect(&admin).await.unwrap();
    let listed = models
        .list_models(gbrain_proto::models::v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ready: Vec<u64> = listed
        .versions
        .iter()
        .filter(|v| v.state == "READY")
        .map(|v| v.version)
        .collect();
    assert!(ready.contains(&evolution.current_version), "{listed:?}");
    assert!(ready.len() <= 2, "{listed:?}");

    // Decisions are a table; shadow predictions are stored beside the live ones; the fit's
    // data snapshot answers as it was.
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT action, version, parent_version, evidence, accuracy, parent_accuracy \
                 FROM model_decisions WHERE model = '{}' ORDER BY decided_at",
                loop_sim::DEFAULT_MODEL
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.num_rows(), decisions.len());
    let actions = arrow::compute::cast(r.column(0), &DataType::Utf8).unwrap();
    let float = |c: usize, i: usize| {
        arrow::compute::cast(r.column(c), &DataType::Float64)
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(i)
    };
    for (i, d) in decisions.iter().enumerate() {
        assert_eq!(actions.as_string::<i32>().value(i), d.action);
        assert_eq!(int(&r, 1, i) as u64, d.version);
        if d.action == "promote" && d.version == promoted.version {
            assert_eq!((float(4, i), float(5, i)), (cand, cur));
        }
    }
    let r = sb
        .sql(
            ANALYST_TOKEN,
            "SELECT role, model_version, count(*) FROM predictions \
             GROUP BY role, model_version ORDER BY role, model_version",
        )
        .await
        .unwrap();
    let roles = arrow::compute::cast(r.column(0), &DataType::Utf8).unwrap();
    let roles: Vec<&str> = (0..r.num_rows())
        .map(|i| roles.as_string::<i32>().value(i))
        .collect();
    assert!(
        roles.contains(&"shadow") && roles.contains(&"live"),
        "{roles:?}"
    );
    // Shadow rows are the candidates': the promoted version decoded in shadow first.
    let versions = arrow::compute::cast(r.column(1), &DataType::Utf8).unwrap();
    let promoted_version = promoted.version.to_string();
    assert!(
        (0..r.num_rows()).any(|i| roles[i] == "shadow"
            && versions.as_string::<i32>().value(i) == promoted_version
            && int(&r, 2, i) > 0),
        "no shadow predictions of v{}",
        promoted.version
    );
    let at_fit = sb
        .sql_at(
            ANALYST_TOKEN,
            Some(&snapshot),
            "SELECT count(*) FROM outcomes",
        )
        .await
        .unwrap();
    let now = sb
        .sql(ANALYST_TOKEN, "SELECT count(*) FROM outcomes")
        .await
        .unwrap();
    assert!(int(&at_fit, 0, 0) > 0 && int(&at_fit, 0, 0) < int(&now, 0, 0));
    let none = sb
        .sql(OTHER_TENANT_TOKEN, "SELECT count(*) FROM model_decisions")
        .await
        .unwrap();
    assert_eq!(int(&none, 0, 0), 0, "another tenant sees no decisions");
    sb.stop().await;
}
