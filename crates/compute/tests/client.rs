//! The typed compute-API methods of `alchemiscale_client` against a real compute API:
//! registration, hubs, both claim routes (including a denied claim), the transformation
//! hand-off, result upload, and the two extension routes.

mod common;

use alchemiscale_client::{Client, Payload};
use alchemiscale_compute::result::{failure_blob, ServiceFailure};
use alchemiscale_model::json::Value;
use alchemiscale_model::{ComputeServiceId, Scope};
use alchemiscale_server::testing::{settings, Backend};
use alchemiscale_server::ApiSettings;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_routes() {
    // no failures tolerated: one failed result and the service's claims are denied
    let env = env_with(Backend::Sqlite, ApiSettings { max_failures: 0, ..settings() }).await.unwrap();
    let (network, tfs) = env.submit("client", 2, &[]).await;
    let tasks = env.tasks(&network, &tfs).await;
    let mut c = Client::new(&env.compute_server.url, COMPUTE_ID, &format!("key-of-{COMPUTE_ID}")).unwrap();
    c.max_retries = 0;
    let id = ComputeServiceId::mint("clienttest").unwrap();
    assert_eq!(c.register(&id, None).await.unwrap(), id);
    assert_eq!(c.heartbeat(&id).await.unwrap(), id);
    // C5: a compute identity lists its own scopes, nobody else's
    assert_eq!(c.get(&format!("/identities/{COMPUTE_ID}/scopes")).await.unwrap(), serde_json::json!(["synth-*-*"]));
    assert_eq!(c.send(reqwest::Method::GET, "/identities/someone-else/scopes", Payload::None).await.unwrap().status, 403);

    let all = Scope::all();
    let hubs = c.query_taskhubs(&[all.clone(), "synth-*-*".parse().unwrap()]).await.unwrap();
    assert_eq!(hubs.len(), 1, "one hub, listed once");
    let info = c.query_taskhubs_gufe(std::slice::from_ref(&all)).await.unwrap();
    assert_eq!((info[0].taskhub.clone(), info[0].network.clone(), info[0].weight), (hubs[0].clone(), network.clone(), 0.5));
    assert!(c.query_taskhubs(&["other-*-*".parse().unwrap()]).await.unwrap().is_empty());

    let first = c.claim_taskhub_tasks(&hubs[0], &id, 1, Some(&["SyntheticProtocol".to_string()])).await.unwrap();
    assert_eq!(first.len(), 1);
    let first = first[0].clone().expect("a task");
    assert!(tasks.contains(&first));
    assert!(c.task_wanted(&first, &id).await.unwrap());
    assert_eq!(c.release_tasks(&id, std::slice::from_ref(&first)).await.unwrap(), vec![Some(first.clone())]);
    assert!(!c.task_wanted(&first, &id).await.unwrap(), "released: not running any more");
    assert_eq!(env.status(&first).await, "waiting");

    let claimed = c.claim_tasks(std::slice::from_ref(&all), None, &id, 3, None).await.unwrap().expect("not denied");
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed.iter().flatten().count(), 2);
    let task = claimed[0].clone().unwrap();
    let t = c.retrieve_task_transformation(&task).await.unwrap();
    assert!(t.extends.is_none());
    let Value::Array(chain) = &t.chain else { panic!("not a chain") };
    let tk = chain.last().unwrap().as_array().unwrap()[0].as_str().unwrap().to_string();
    assert!(tfs.iter().any(|tf| tf.gufe_key().as_str() == tk));

    let failure = ServiceFailure { exception: "RuntimeError", message: "boom", traceback: "RuntimeError: boom\n" };
    let blob = failure_blob(None, Some(&task.to_string()), Some(&tk), None, failure);
    let pdrr = c.set_task_result(&task, &blob, &id).await.unwrap();
    assert_eq!(pdrr.qualname(), "ProtocolDAGResultRef");
    assert_eq!(pdrr.scope(), task.scope());
    assert_eq!(env.status(&task).await, "error");
    assert_eq!(c.claim_tasks(&[all], None, &id, 1, None).await.unwrap(), None, "denied after a failure");

    assert_eq!(c.deregister(&id).await.unwrap(), id);
    assert_eq!(env.registrations().await, 0);
    let other = claimed[1].clone().unwrap();
    assert_eq!(env.status(&other).await, "waiting", "deregistration returned the other claimed task");
    let err = c.claim_tasks(&[Scope::all()], None, &id, 1, None).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}
