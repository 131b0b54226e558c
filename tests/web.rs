//! The coordinator page in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! chromedriver (both installed by `.ci/run`). Sign-in and its refusals, a submission appearing
//! live, a lab marked offline from the page and its offers moving, a stranded job reassigned, CSRF
//! refusal, a screenshot under load and an axe-core accessibility check. Fails, never skips, when
//! Chromium cannot run.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use labaid::proto::{self, Priority};
use serde_json::{Value, json};

/// Where the screenshot and the accessibility report go.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-artifacts");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

/// axe-core, as `.ci/run` installs it (`npm install axe-core` into target/web-tools), or where
/// LABAID_AXE_JS points.
fn axe_source() -> String {
    let path = std::env::var_os("LABAID_AXE_JS").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/web-tools/node_modules/axe-core/axe.min.js")
        },
        PathBuf::from,
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core is needed at {} ({e}); run .ci/run, or `npm install --prefix target/web-tools axe-core`",
            path.display()
        )
    })
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_browser() -> (Driver, Browser) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver must be installed (apt-get install chromium chromium-driver; .ci/run does)");
    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    // chromedriver takes a moment to listen: try to connect for up to ten seconds.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "chromedriver did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1600,1100",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    // Plain HTTP to chromedriver on loopback: no TLS stack in the WebDriver client, so the test
    // build's rustls keeps the one crypto provider the broker uses.
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("Chromium must start headless through chromedriver");
    (driver, browser)
}

/// Evaluates `script` (a JS expression) until it is truthy, failing after `limit`; returns how
/// long it took.
async fn until(browser: &Browser, script: &str, limit: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let v = browser
            // An element the page has not drawn yet reads as "not yet", not as a failure.
            .execute(
                &format!("try {{ return !!({script}); }} catch (e) {{ return false; }}"),
                vec![],
            )
            .await
            .expect("script");
        if v == Value::Bool(true) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not seen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text of the element `css`, waiting (bounded) for it to appear: a form just submitted
/// may still be on its way to the next page.
async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Types `reason` into the open confirmation dialog and confirms the action.
async fn confirm_action(browser: &Browser, reason: &str) {
    browser
        .find(Locator::Id("action-reason"))
        .await
        .unwrap()
        .send_keys(reason)
        .await
        .unwrap();
    browser
        .find(Locator::Id("action-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/signin")).await.expect("goto");
    let field = browser
        .find(Locator::Id("token"))
        .await
        .expect("token field");
    field.send_keys(token).await.expect("type token");
    browser
        .find(Locator::Id("signin-submit"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sign in");
}

/// Runs axe-core in the page; returns the serious and critical violations, and writes the whole
/// report to `name`.
async fn accessibility(browser: &Browser, axe: &str, name: &str) -> Vec<Value> {
    browser.execute(axe, vec![]).await.expect("inject axe-core");
    let report = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] })
                .then(r => done(r), e => done({ error: String(e) }));",
            vec![],
        )
        .await
        .expect("axe.run");
    assert!(report.get("error").is_none(), "axe failed: {report}");
    std::fs::write(
        artefacts().join(name),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write axe report");
    report["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .cloned()
        .collect()
}

/// The client of the trust that submitted `r`.
fn trust_of<'a>(
    rj1: &'a labaid::client::Client,
    rjz: &'a labaid::client::Client,
    r: &proto::Request,
) -> &'a labaid::client::Client {
    if r.trust == "RJZ" { rjz } else { rj1 }
}

/// Lines of the audit trail with `action`, once the writer has put them there.
async fn audited(data_dir: &Path, action: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(data_dir.join("audit.log")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["action"] == action)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{action} not audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_works_the_incident_room_in_a_real_browser() {
    let axe = axe_source();
    let broker = TestBroker::spawn_with_web(labaid::Config::demo().unwrap()).await;
    let base = format!("http://{}", broker.web_addr.expect("web listener"));
    let (_driver, browser) = start_browser().await;

    // Without a session the page sends you to sign in; the sign-in page itself is accessible.
    browser.goto(&base).await.expect("goto");
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/signin")
    );
    let bad = accessibility(&browser, &axe, "signin-axe.json").await;
    assert!(
        bad.is_empty(),
        "sign-in page: serious accessibility violations: {bad:#?}"
    );

    // A trust's and a lab's credentials, and a made-up token, are refused and open no session.
    for (token, says) in [
        ("demo:RJ1", "coordinators only"),
        ("demo:RJ7", "coordinators only"),
        ("not-a-token", "Sign-in refused"),
    ] {
        sign_in(&browser, &base, token).await;
        let alert = text_of(&browser, "#signin-error").await;
        assert!(alert.contains(says), "{token}: {alert}");
        browser.goto(&base).await.expect("goto");
        assert!(
            browser
                .current_url()
                .await
                .unwrap()
                .path()
                .ends_with("/signin"),
            "{token} opened a session"
        );
    }
    let cookies = browser.get_all_cookies().await.expect("cookies");
    assert!(cookies.is_empty(), "a refused sign-in set {cookies:?}");

    // The coordinator signs in: an HttpOnly, SameSite=Strict session cookie, and the live feed.
    sign_in(&browser, &base, "demo:coordinator").await;
    until(
        &browser,
        "document.getElementById('feed-status').textContent === 'Live'",
        Duration::from_secs(5),
        "live feed",
    )
    .await;
    let cookie = browser
        .get_named_cookie("labaid_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(
        browser
            .execute("return document.cookie;", vec![])
            .await
            .unwrap(),
        json!(""),
        "the session cookie must not be readable by scripts"
    );

    // A submission appears on the page within a second.
    let trust = broker.client("RJ1").await;
    let r = submit(
        &trust,
        submission_of(
            "WEB-1",
            Priority::Stat,
            &["K"],
            broker.now().plus_minutes(-20),
        ),
    )
    .await;
    let took = until(
        &browser,
        &format!("document.getElementById('offer-{}')", r.id),
        Duration::from_secs(1),
        "the new request among open offers",
    )
    .await;
    println!(
        "submission visible on the page after {} ms",
        took.as_millis()
    );
    assert!(
        text_of(&browser, &format!("#deadline-{}", r.id))
            .await
            .contains("left"),
        "its time left is shown"
    );
    let first_lab = r.lab.clone();
    let offered_to = |id: &str| {
        format!(
            "document.getElementById('offer-{id}') && document.getElementById('offer-{id}').dataset.lab"
        )
    };

    // A script without the session's CSRF token is refused, and changes nothing.
    let refused = browser
        .execute_async(
            &format!(
                "const done = arguments[0];
                 fetch('/api/labs/{first_lab}/status', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }},
                   body: JSON.stringify({{ status: 'offline', reason: 'forged' }}) }}).then(r => done(r.status));"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(403));
    assert_eq!(get_request(&trust, &r.id).await.lab, first_lab);

    // Mark the offered lab offline from the page: a confirmation that needs a reason.
    browser
        .find(Locator::Id(&format!("lab-{first_lab}-status")))
        .await
        .expect("status button")
        .click()
        .await
        .unwrap();
    browser
        .find(Locator::Id("action-status"))
        .await
        .unwrap()
        .select_by_value("offline")
        .await
        .unwrap();
    browser
        .find(Locator::Id("action-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        text_of(&browser, "#action-error")
            .await
            .contains("reason is required"),
        "confirming without a reason is refused"
    );
    assert_eq!(
        get_request(&trust, &r.id).await.lab,
        first_lab,
        "nothing changed yet"
    );
    confirm_action(&browser, "analyser down, phoned 04:20").await;
    until(
        &browser,
        &format!(
            "{} && {} !== '{first_lab}'",
            offered_to(&r.id),
            offered_to(&r.id)
        ),
        Duration::from_secs(2),
        "the offer moving to another lab",
    )
    .await;
    until(
        &browser,
        &format!("document.getElementById('lab-{first_lab}').textContent.includes('OFFLINE')"),
        Duration::from_secs(2),
        "the lab shown offline",
    )
    .await;
    let moved = get_request(&trust, &r.id).await;
    assert_ne!(moved.lab, first_lab);
    assert_eq!(moved.state, proto::RequestState::Offered as i32);
    let entries = audited(&broker.data_dir, "coordinator.lab_status", 1).await;
    assert_eq!(entries[0]["org"], "X24");
    assert_eq!(entries[0]["role"], "coordinator");
    assert_eq!(entries[0]["reason"], "analyser down, phoned 04:20");

    // The second lab accepts, then goes dark: the stranded job is reassigned from the page.
    let second_lab = moved.lab.clone();
    let lab = broker.client(&second_lab).await;
    lab.labs()
        .accept_job(proto::AcceptJobRequest { id: r.id.clone() })
        .await
        .expect("accept");
    broker
        .client("coordinator")
        .await
        .coordinator()
        .set_lab_status(proto::SetLabStatusRequest {
            lab: second_lab.clone(),
            status: proto::LabStatus::Offline as i32,
            reason: "no answer on the phone".into(),
        })
        .await
        .expect("offline");
    until(
        &browser,
        &format!("document.getElementById('reassign-{}')", r.id),
        Duration::from_secs(2),
        "the stranded job with its reassign button",
    )
    .await;
    browser
        .find(Locator::Id(&format!("reassign-{}", r.id)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    confirm_action(&browser, "lab offline before the sample arrived").await;
    until(
        &browser,
        &format!(
            "!document.getElementById('awaiting-{id}') && {} && !['{first_lab}', '{second_lab}'].includes({})",
            offered_to(&r.id),
            offered_to(&r.id),
            id = r.id
        ),
        Duration::from_secs(2),
        "the reassigned job offered to a third lab",
    )
    .await;
    let reassigned = audited(&broker.data_dir, "coordinator.reassign", 1).await;
    assert_eq!(reassigned[0]["request_id"], json!(r.id));
    assert_eq!(
        reassigned[0]["reason"],
        "lab offline before the sample arrived"
    );
    // The page's decisions and the gRPC call's are audited alike, and chain like any other entry.
    let statuses = audited(&broker.data_dir, "coordinator.lab_status", 2).await;
    assert_eq!(statuses[1]["reason"], "no answer on the phone");
    for e in statuses.iter().chain(&reassigned) {
        let entry: labaid::audit::AuditEntry = serde_json::from_value(e.clone()).unwrap();
        assert_eq!(entry.compute_hash(), entry.hash);
    }

    // Under load: both trusts submit a mix of priorities and labs take some of the work.
    let rjz = broker.client("RJZ").await;
    let mix = [
        (Priority::Stat, &["K"][..]),
        (Priority::Asap, &["FBC", "UE"][..]),
        (Priority::Urgent, &["TROP"][..]),
        (Priority::Routine, &["CRP", "LFT"][..]),
    ];
    let mut ids = Vec::new();
    for i in 0..60 {
        let (priority, tests) = mix[i % mix.len()];
        let client = if i % 3 == 0 { &rjz } else { &trust };
        let minutes_ago = 20 + (i as i64 * 7) % 200;
        let req = submit(
            client,
            submission_of(
                &format!("LOAD-{i}"),
                priority,
                tests,
                broker.now().plus_minutes(-minutes_ago),
            ),
        )
        .await;
        ids.push(req);
    }
    let offered: Vec<&proto::Request> = ids
        .iter()
        .filter(|r| r.state == proto::RequestState::Offered as i32)
        .collect();
    // A dozen jobs are accepted and wait for their samples.
    let waiting: Vec<&proto::Request> = offered
        .iter()
        .copied()
        .filter(|r| r.tests != ["K"])
        .collect();
    for req in waiting.iter().take(12) {
        let lab = broker.client(&req.lab).await;
        lab.labs()
            .accept_job(proto::AcceptJobRequest { id: req.id.clone() })
            .await
            .expect("accept");
    }
    // Crossmatches for King's: St George's has room for six, Lewisham is offline, so two wait.
    for i in 0..8 {
        submit(
            &rjz,
            submission_of(
                &format!("XM-{i}"),
                Priority::Stat,
                &["XM"],
                broker.now().plus_minutes(-30),
            ),
        )
        .await;
    }
    until(
        &browser,
        "document.getElementById('queue-stat').cells[1].textContent === '2'",
        Duration::from_secs(2),
        "two stat requests waiting",
    )
    .await;
    // An hour later they have waited past the stat target: the row says so in words.
    broker.advance(Duration::from_secs(61 * 60));
    until(
        &browser,
        "document.getElementById('queue-stat').textContent.includes('TARGET BREACHED')",
        Duration::from_secs(2),
        "the stat target breach",
    )
    .await;
    // Potassium results come back within the hour (the charts' window): those offered now.
    let mut resulted = 0;
    for req in ids.iter().filter(|r| r.tests == ["K"]) {
        let now = get_request(trust_of(&trust, &rjz, req), &req.id).await;
        if now.state != proto::RequestState::Offered as i32 || resulted == 4 {
            continue;
        }
        let lab = broker.client(&now.lab).await;
        accept_and_receive(&lab, &now.id).await;
        lab.labs()
            .post_results(proto::PostResultsRequest {
                id: now.id.clone(),
                observations: vec![k_result("4.1")],
            })
            .await
            .expect("results");
        resulted += 1;
    }
    assert!(resulted > 0, "no potassium request left on offer to result");
    until(
        &browser,
        "document.querySelector('#charts figcaption').textContent.match(/stat: [1-9]/)",
        Duration::from_secs(2),
        "stat results in the chart",
    )
    .await;
    until(
        &browser,
        "document.querySelectorAll('#awaiting tbody tr[id]').length >= 8",
        Duration::from_secs(2),
        "the accepted jobs awaiting their samples",
    )
    .await;
    until(
        &browser,
        "document.querySelector('#charts figcaption').textContent.includes('results in the last hour')",
        Duration::from_secs(2),
        "the charts",
    )
    .await;
    // The whole page in one picture, as a wall screen would show it.
    browser
        .set_window_size(1600, 3800)
        .await
        .expect("window size");
    browser
        .execute(
            "window.scrollTo(0, 0); document.activeElement.blur();",
            vec![],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // one repaint after the resize
    let shot = browser.screenshot().await.expect("screenshot");
    let path = artefacts().join("coordinator.png");
    std::fs::write(&path, shot).expect("write screenshot");
    println!("screenshot: {}", path.display());

    let bad = accessibility(&browser, &axe, "coordinator-axe.json").await;
    assert!(
        bad.is_empty(),
        "coordinator page: serious accessibility violations: {bad:#?}"
    );

    // Signing out ends the session: the feed and the API answer 401 to that cookie.
    browser
        .find(Locator::Css("#signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "window.location.pathname === '/signin'",
        Duration::from_secs(5),
        "the sign-in page after signing out",
    )
    .await;
    let status = browser
        .execute_async(
            "const done = arguments[0]; fetch('/api/snapshot').then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(401));
    browser.close().await.expect("close browser");
    broker.shutdown().await;
}

/// A demo broker on `dir` serving the page on `web`, until the returned sender is used.
async fn broker_on(
    dir: &Path,
    web: tokio::net::TcpListener,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), labaid::Error>>,
) {
    let mut config = labaid::Config::demo().unwrap();
    config.data_dir = dir.to_path_buf();
    let config = common::on_test_store(config).await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, serving) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(labaid::serve_on(
        labaid::Listeners {
            grpc,
            ops: None,
            web: Some(web),
            on_ready: Some(ready),
        },
        config,
        async {
            let _ = stopped.await;
        },
    ));
    serving.await.expect("the broker serves");
    (addr, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_notices_a_broker_restart_and_comes_back_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    let base = format!("http://{web_addr}");
    let (addr, stop, task) = broker_on(dir.path(), web).await;
    let (_driver, browser) = start_browser().await;
    sign_in(&browser, &base, "demo:coordinator").await;
    until(
        &browser,
        "document.getElementById('feed-status').textContent === 'Live'",
        Duration::from_secs(5),
        "live feed",
    )
    .await;
    let trust = labaid::client::Client::connect(&labaid::client::ConnectOptions {
        addr: format!("http://{addr}"),
        token: Some("demo:RJ1".into()),
        connect_timeout: None,
        tls: None,
    })
    .await
    .unwrap();
    let r = submit(
        &trust,
        submission(
            "RESTART-1",
            Priority::Stat,
            labaid::domain::Timestamp::now(),
        ),
    )
    .await;
    until(
        &browser,
        &format!("document.getElementById('offer-{}')", r.id),
        Duration::from_secs(2),
        "the request",
    )
    .await;

    // The broker stops: the page says the connection is lost, and keeps trying.
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    until(
        &browser,
        "document.getElementById('feed-status').textContent.startsWith('Connection lost') || document.getElementById('feed-status').textContent.startsWith('Broker unreachable')",
        Duration::from_secs(5),
        "the lost connection shown",
    )
    .await;

    // It comes back on the same address: sessions do not outlive a restart, so the page goes to
    // the sign-in by itself; signed in again, it is live with what the broker had made durable.
    let web = tokio::net::TcpListener::bind(web_addr).await.unwrap();
    let (_, stop, task) = broker_on(dir.path(), web).await;
    until(
        &browser,
        "window.location.pathname === '/signin'",
        Duration::from_secs(10),
        "the page back at sign-in",
    )
    .await;
    sign_in(&browser, &base, "demo:coordinator").await;
    until(
        &browser,
        "document.getElementById('feed-status').textContent === 'Live'",
        Duration::from_secs(5),
        "live again",
    )
    .await;
    until(
        &browser,
        &format!("document.getElementById('offer-{}')", r.id),
        Duration::from_secs(2),
        "the request after the restart",
    )
    .await;
    browser.close().await.expect("close browser");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
