//! The webhook lifecycle matrix: every `serviceApp` delivery shape Webex may send, times every
//! way deliveries may arrive (in order, repeated, late, cut off, to two replicas at once),
//! against one flavour and one kind of store. Each cell runs in a fresh world and asserts
//! that the customer org ends registered or removed as the latest real event says, that the
//! provider's own org is never registered, and how many Service App token fetches it cost.
//!
//! ```text
//! let rows = lifecycle::run_matrix(Arc::new(Adapter), lifecycle::memory()).await;
//! lifecycle::print(&rows);
//! ```

use std::sync::Arc;
use std::time::Duration;

use byova_core::{
    InMemoryTokenStorage, TokenKey, WebhookSecret,
    backend::{BlockingCoordinatedTokenStorage, CoordinatedTokenStorage},
    webhook::ServiceAppEventKind,
};

use super::{Flavour, ORG, Sdk, World, org_id, world_on};
use crate::fake::{DeliveryShape, Endpoint};

/// One store, seen through both storage traits.
pub type Stores = (Arc<dyn CoordinatedTokenStorage>, Arc<dyn BlockingCoordinatedTokenStorage>);

/// Makes a fresh, empty store for each cell of the matrix.
pub type StoreFactory = Arc<dyn Fn() -> Stores + Send + Sync>;

/// A fresh in-memory store per cell.
pub fn memory() -> StoreFactory {
    Arc::new(|| {
        let store = Arc::new(InMemoryTokenStorage::new());
        (store.clone(), store)
    })
}

/// One cell's result.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Cell {
    /// The delivery shape.
    pub shape: &'static str,
    /// The case.
    pub case: &'static str,
    /// How the org ended: `registered` or `removed`.
    pub ends: &'static str,
    /// Service App token fetches the case cost.
    pub fetches: u64,
    /// How long the case took.
    pub took: Duration,
}

struct Shape {
    name: &'static str,
    shape: DeliveryShape,
    event_time: bool,
    deauthorization_date: bool,
    application_id: bool,
}

const SHAPES: [Shape; 6] = [
    Shape {
        name: "guide, with authorizationDate",
        shape: DeliveryShape::Guide,
        event_time: true,
        deauthorization_date: false,
        application_id: true,
    },
    Shape {
        name: "guide, no event time",
        shape: DeliveryShape::Guide,
        event_time: false,
        deauthorization_date: false,
        application_id: true,
    },
    Shape {
        name: "Cisco sample",
        shape: DeliveryShape::CiscoSample,
        event_time: false,
        deauthorization_date: false,
        application_id: true,
    },
    Shape {
        name: "Cisco sample, with authorizationDate",
        shape: DeliveryShape::CiscoSample,
        event_time: true,
        deauthorization_date: false,
        application_id: true,
    },
    Shape {
        name: "guide, deauthorizationDate",
        shape: DeliveryShape::Guide,
        event_time: true,
        deauthorization_date: true,
        application_id: true,
    },
    Shape {
        name: "reconstruction, no data.id",
        shape: DeliveryShape::Reconstruction,
        event_time: true,
        deauthorization_date: false,
        application_id: false,
    },
];

const SECRET: &str = "lifecycle-secret";

/// One cell's world: the fake, the SDK, and deliveries signed as Webex would.
struct Cell0 {
    w: World,
    secret: WebhookSecret,
    started: std::time::Instant,
}

impl Cell0 {
    fn new(flavour: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Self {
        let (async_storage, blocking_storage) = stores();
        let w = world_on(
            flavour,
            Some(SECRET),
            Arc::new(InMemoryTokenStorage::new()),
            async_storage,
            blocking_storage,
        );
        w.fake.update_settings(|s| {
            s.delivery_shape = shape.shape;
            s.delivery_event_time = shape.event_time;
            s.deauthorization_date_field = shape.deauthorization_date;
            s.delivery_application_id = shape.application_id;
        });
        Self { w, secret: WebhookSecret::new(SECRET), started: std::time::Instant::now() }
    }

    /// The admin acts at Webex, and the delivery Webex sends for it.
    fn event(&self, kind: ServiceAppEventKind) -> (Vec<u8>, Option<String>) {
        match kind {
            ServiceAppEventKind::Authorized => self.w.fake.authorize_org(ORG),
            ServiceAppEventKind::Deauthorized => self.w.fake.deauthorize_org(ORG),
        }
        self.w.fake.service_app_delivery(kind, ORG, Some(&self.secret))
    }

    async fn deliver(&self, sdk: &Arc<dyn Sdk>, delivery: &(Vec<u8>, Option<String>)) -> String {
        sdk.handle_webhook(delivery.0.clone(), delivery.1.clone()).await.expect("the delivery is handled")
    }

    async fn registered(&self) -> bool {
        self.w.stored(&TokenKey::org(&org_id(ORG))).await.is_some()
    }

    async fn finish(self, shape: &Shape, case: &'static str) -> Cell {
        let provider = self.w.fake.provider_org_id();
        assert!(
            self.w.stored(&TokenKey::org(&org_id(provider))).await.is_none(),
            "{}/{case}: the provider's own org was registered",
            shape.name
        );
        let ends = if self.registered().await { "registered" } else { "removed" };
        let took = self.started.elapsed();
        Cell { shape: shape.name, case, ends, fetches: self.w.fake.calls(Endpoint::ApplicationToken), took }
    }
}

/// Runs every case for every shape and returns the cells; panics on the first cell whose
/// outcome is wrong.
pub async fn run_matrix(flavour: Arc<dyn Flavour>, stores: StoreFactory) -> Vec<Cell> {
    let mut cells = Vec::new();
    for shape in &SHAPES {
        cells.push(authorize(flavour.as_ref(), shape, &stores).await);
        cells.push(deauthorize(flavour.as_ref(), shape, &stores).await);
        cells.push(authorize_again(flavour.as_ref(), shape, &stores).await);
        cells.push(replayed_old_deauthorized(flavour.as_ref(), shape, &stores).await);
        cells.push(reordered(flavour.as_ref(), shape, &stores).await);
        cells.push(cut_mid_fetch_then_redelivered(flavour.as_ref(), shape, &stores).await);
        cells.push(a_later_authorization_during_a_fetch(flavour.as_ref(), shape, &stores).await);
        cells.push(two_replicas_at_once(flavour.as_ref(), shape, &stores).await);
    }
    cells
}

/// Prints the matrix, one line per cell.
pub fn print(flavour: &str, store: &str, cells: &[Cell]) {
    for c in cells {
        println!(
            "lifecycle [{flavour}, {store}] {:<38} {:<36} -> {:<10} {} fetch(es) in {:.2?}",
            c.shape, c.case, c.ends, c.fetches, c.took
        );
    }
}

async fn authorize(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    let outcome = c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Authorized)).await;
    assert!(outcome.contains("Registered"), "{}: {outcome}", shape.name);
    assert!(c.registered().await, "{}: the customer org is registered", shape.name);
    let cell = c.finish(shape, "authorize").await;
    assert_eq!(cell.fetches, 1, "{}", shape.name);
    cell
}

async fn deauthorize(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Authorized)).await;
    let outcome = c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Deauthorized)).await;
    assert!(outcome.contains("Removed"), "{}: {outcome}", shape.name);
    let cell = c.finish(shape, "authorize, deauthorize").await;
    // Without an event time Webex is asked (a fetch it refuses) before anything is removed.
    let fetches = if shape.event_time { 1 } else { 2 };
    assert_eq!((cell.ends, cell.fetches), ("removed", fetches), "{}", shape.name);
    cell
}

async fn authorize_again(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Authorized)).await;
    c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Deauthorized)).await;
    let outcome = c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Authorized)).await;
    assert!(outcome.contains("Registered"), "{}: {outcome}", shape.name);
    let cell = c.finish(shape, "authorize, deauthorize, authorize").await;
    let fetches = if shape.event_time { 2 } else { 3 };
    assert_eq!(
        (cell.ends, cell.fetches),
        ("registered", fetches),
        "{}: one fetch per authorization",
        shape.name
    );
    cell
}

/// An old `deauthorized` delivered again after the org authorized anew. A delivery that carries
/// its event's time is placed by it; one without is checked with Webex (a fetch it answers, as
/// the org is authorized), so a captured replay removes nothing either way.
async fn replayed_old_deauthorized(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Authorized)).await;
    let old = c.event(ServiceAppEventKind::Deauthorized);
    c.deliver(&c.w.sdk, &old).await;
    c.deliver(&c.w.sdk, &c.event(ServiceAppEventKind::Authorized)).await;
    let outcome = c.deliver(&c.w.sdk, &old).await;
    let cell = c.finish(shape, "... then the old deauthorized again").await;
    assert!(outcome.contains("Superseded"), "{}: {outcome}", shape.name);
    assert_eq!(cell.ends, "registered", "{}: the latest real event is the authorization", shape.name);
    let fetches = if shape.event_time { 2 } else { 4 };
    assert_eq!(cell.fetches, fetches, "{}", shape.name);
    cell
}

/// Authorize, deauthorize, authorize; the deliveries arrive newest first.
async fn reordered(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    let a1 = c.event(ServiceAppEventKind::Authorized);
    let d1 = c.event(ServiceAppEventKind::Deauthorized);
    let a2 = c.event(ServiceAppEventKind::Authorized);
    for delivery in [&a2, &a1, &d1] {
        c.deliver(&c.w.sdk, delivery).await;
    }
    let cell = c.finish(shape, "a2, a1, d1 (newest first)").await;
    // Without an event time, d1 is checked with Webex, which still issues the org's tokens.
    let fetches = if shape.event_time { 1 } else { 2 };
    assert_eq!(
        (cell.ends, cell.fetches),
        ("registered", fetches),
        "{}: the older events change nothing",
        shape.name
    );
    cell
}

/// Webex gives up on a delivery while its fetch is in flight, then redelivers it: once at
/// once (joining the fetch), once after the fetch finished.
async fn cut_mid_fetch_then_redelivered(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    let delivery = c.event(ServiceAppEventKind::Authorized);
    c.w.fake.set_answer_latency(Endpoint::ApplicationToken, Duration::from_millis(800));
    let cut = tokio::time::timeout(Duration::from_millis(200), c.deliver(&c.w.sdk, &delivery)).await;
    assert!(cut.is_err(), "the first delivery was cut off");
    let outcome = c.deliver(&c.w.sdk, &delivery).await;
    assert!(outcome.contains("Registered"), "{}: {outcome}", shape.name);
    c.w.fake.set_answer_latency(Endpoint::ApplicationToken, Duration::ZERO);
    let later = c.deliver(&c.w.sdk, &delivery).await;
    assert!(later.contains("Registered"), "{}: {later}", shape.name);
    let cell = c.finish(shape, "cut mid-fetch, redelivered twice").await;
    assert_eq!(
        (cell.ends, cell.fetches),
        ("registered", 1),
        "{}: one fetch for one authorization",
        shape.name
    );
    cell
}

/// Authorize, deauthorize, authorize, delivered while the first fetch is still in flight: the
/// later authorization must not be answered by the earlier one's fetch (a deauthorization
/// queued between them would then remove the org for good).
async fn a_later_authorization_during_a_fetch(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    let (a1, d1, a2) = (
        c.event(ServiceAppEventKind::Authorized),
        c.event(ServiceAppEventKind::Deauthorized),
        c.event(ServiceAppEventKind::Authorized),
    );
    c.w.fake.set_latency(Endpoint::ApplicationToken, Duration::from_millis(300));
    let pause = || tokio::time::sleep(Duration::from_millis(60));
    let first = c.deliver(&c.w.sdk, &a1);
    let second = async {
        pause().await;
        c.deliver(&c.w.sdk, &d1).await
    };
    let third = async {
        pause().await;
        pause().await;
        c.deliver(&c.w.sdk, &a2).await
    };
    tokio::join!(first, second, third);
    let cell = c.finish(shape, "a1 fetching; d1, a2 arrive meanwhile").await;
    // Without an event time a1 and a2 are the same bytes (a2 reads as a1's redelivery), and
    // d1 is checked with Webex, which issues the org's tokens again after a2.
    assert_eq!((cell.ends, cell.fetches), ("registered", 2), "{}: a2 is the latest event", shape.name);
    cell
}

/// The same delivery reaches two replicas (two SDK instances on one store) at once.
async fn two_replicas_at_once(f: &dyn Flavour, shape: &Shape, stores: &StoreFactory) -> Cell {
    let c = Cell0::new(f, shape, stores);
    c.w.seed_fresh_integration().await;
    let other = f.build(&c.w.setup);
    let delivery = c.event(ServiceAppEventKind::Authorized);
    c.w.fake.set_latency(Endpoint::ApplicationToken, Duration::from_millis(200));
    let (a, b) = tokio::join!(c.deliver(&c.w.sdk, &delivery), c.deliver(&other, &delivery));
    assert!(a.contains("Registered") && b.contains("Registered"), "{}: {a} / {b}", shape.name);
    let cell = c.finish(shape, "one delivery to two replicas at once").await;
    assert_eq!((cell.ends, cell.fetches), ("registered", 1), "{}: one fetch between them", shape.name);
    cell
}
