//! The typed client that `labctl`, the bench, the edges and the tests share: a transport that
//! follows the leading broker, plus the caller's credential on every call.

mod failover;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

pub use failover::Transport;

use crate::proto;
use crate::proto::coordinator_service_client::CoordinatorServiceClient;
use crate::proto::directory_service_client::DirectoryServiceClient;
use crate::proto::lab_service_client::LabServiceClient;
use crate::proto::request_service_client::RequestServiceClient;

/// Where and as whom to connect.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Broker address, e.g. `http://127.0.0.1:50051`.
    pub addr: String,
    /// Bearer token, e.g. `demo:RJ1`.
    pub token: Option<String>,
    /// How long to wait for the connection.
    pub connect_timeout: Option<Duration>,
    /// TLS; when set, an `http://` address is upgraded to `https://`.
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS (labctl: `--ca`, `--cert`, `--key`; `LABAID_CA`, `LABAID_CERT`,
/// `LABAID_KEY`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that issued the broker's certificate.
    pub ca: PathBuf,
    /// This organisation's client certificate (mutual TLS); leave out to use a token instead.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

impl ConnectOptions {
    /// The same options for one broker address.
    fn with_addr(&self, addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            ..self.clone()
        }
    }
}

/// The comma-separated addresses in `addr`.
fn addresses(addr: &str) -> Vec<String> {
    addr.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// True when the broker answers gRPC health SERVING (it leads its store).
async fn leads(channel: &Channel) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = health.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a URI.
    #[error("invalid broker address {addr:?}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The token cannot be sent as a header.
    #[error("the token contains characters that cannot be sent")]
    Token,
    /// A TLS file is missing or unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Several addresses were given and none of them leads (answers health SERVING).
    #[error("none of the brokers at {addrs} leads (each is unreachable or a standby)")]
    NoLeader {
        /// The addresses given.
        addrs: String,
    },
    /// No connection could be made.
    #[error("cannot reach the broker at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
}

fn client_tls(files: &TlsFiles) -> Result<ClientTlsConfig, ClientError> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&files.ca, "CA")?));
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read(cert, "certificate")?,
                read(key, "key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(ClientError::Tls(
                "give the client certificate and its key together".into(),
            ));
        }
    }
    Ok(tls)
}

/// Adds `authorization: Bearer <token>` to every call and, for a trusted edge, the
/// organisation it calls on behalf of.
#[derive(Debug, Clone, Default)]
pub struct BearerAuth {
    token: Option<MetadataValue<Ascii>>,
    on_behalf_of: Option<MetadataValue<Ascii>>,
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(org) = &self.on_behalf_of {
            request
                .metadata_mut()
                .insert(crate::auth::ON_BEHALF_OF, org.clone());
        }
        Ok(request)
    }
}

/// A connected client.
#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
    auth: BearerAuth,
}

/// A generated client with the credential attached.
pub type Authed = InterceptedService<Transport, BearerAuth>;

impl Client {
    /// Connects to the broker.
    pub async fn connect(options: &ConnectOptions) -> Result<Self, ClientError> {
        Self::connect_with(options, |endpoint| endpoint).await
    }

    /// Connects to the broker, letting the caller tune the endpoint first (a call timeout for
    /// one-shot commands, HTTP/2 keep-alive for long-lived watches). Several comma-separated
    /// addresses name brokers sharing one store: the client connects to the one that leads
    /// (gRPC health SERVING), trying them all again for a few seconds while a standby takes over,
    /// and moves to the new leader whenever it loses the one it has.
    pub async fn connect_with(
        options: &ConnectOptions,
        configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    ) -> Result<Self, ClientError> {
        let addrs = addresses(&options.addr);
        let configure: failover::Configure = Arc::new(configure);
        if addrs.len() <= 1 {
            let (channel, auth) =
                Self::connect_one(options, options.addr.trim(), &configure).await?;
            return Ok(Self {
                transport: Transport::new(channel, None),
                auth,
            });
        }
        let (_, auth) = Self::first_endpoint(options, &addrs)?;
        // A takeover takes a lease's lifetime (two seconds by default) plus catching up.
        let deadline = tokio::time::Instant::now()
            + options
                .connect_timeout
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_secs(10));
        let finder = Self::finder(options, &addrs, &configure);
        loop {
            for addr in &addrs {
                if let Some(channel) = (finder.probe)(addr.clone()).await {
                    return Ok(Self {
                        transport: Transport::new(channel, Some(finder)),
                        auth,
                    });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NoLeader {
                    addrs: options.addr.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first address's endpoint and credential, once every address is checked, so that a
    /// mistyped one is reported now rather than at a takeover.
    fn first_endpoint(
        options: &ConnectOptions,
        addrs: &[String],
    ) -> Result<(Endpoint, BearerAuth), ClientError> {
        for addr in addrs.iter().skip(1) {
            Self::endpoint(&options.with_addr(addr))?;
        }
        Self::endpoint(&options.with_addr(addrs.first().map_or("", String::as_str)))
    }

    /// How to find the leader among `addrs` again: connect to each and ask.
    fn finder(
        options: &ConnectOptions,
        addrs: &[String],
        configure: &failover::Configure,
    ) -> failover::Finder {
        let options = options.clone();
        let configure = configure.clone();
        failover::Finder {
            addrs: addrs.to_vec(),
            probe: Arc::new(move |addr| {
                let options = options.clone();
                let configure = configure.clone();
                Box::pin(async move {
                    let (channel, _) = Self::connect_one(&options, &addr, &configure).await.ok()?;
                    leads(&channel).await.then_some(channel)
                })
            }),
        }
    }

    async fn connect_one(
        options: &ConnectOptions,
        addr: &str,
        configure: &failover::Configure,
    ) -> Result<(Channel, BearerAuth), ClientError> {
        let options = &options.with_addr(addr);
        let (endpoint, auth) = Self::endpoint(options)?;
        let endpoint = configure(endpoint);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: options.addr.clone(),
                source,
            })?;
        Ok((channel, auth))
    }

    /// A client that connects on its first call and reconnects after the broker went away (for
    /// long-running adapters such as labaid-edge, which must start, and answer "unavailable",
    /// while the broker is down). Given several addresses it starts with the first and looks
    /// for the leader at once, and again whenever it loses it.
    pub fn connect_lazy(options: &ConnectOptions) -> Result<Self, ClientError> {
        let addrs = addresses(&options.addr);
        let (endpoint, auth) = Self::first_endpoint(options, &addrs)?;
        let finder = (addrs.len() > 1).then(|| {
            let configure: failover::Configure = Arc::new(|e| e);
            Self::finder(options, &addrs, &configure)
        });
        let several = finder.is_some();
        let transport = Transport::new(endpoint.connect_lazy(), finder);
        if several {
            transport.search();
        }
        Ok(Self { transport, auth })
    }

    /// The same connection, calling with another bearer token (an adapter forwarding each of its
    /// callers' credentials over one channel).
    pub fn with_token(&self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {token}")
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| ClientError::Token)?;
        Ok(Self {
            transport: self.transport.clone(),
            auth: BearerAuth {
                token: Some(value),
                on_behalf_of: None,
            },
        })
    }

    /// The same connection and credential, each call naming `org` as the organisation it is
    /// made for: what a trusted edge sends for a caller it authenticated itself. The broker
    /// refuses it from any credential but a configured edge's that may speak for `org`.
    pub fn on_behalf_of(&self, org: &crate::domain::OdsCode) -> Self {
        let value = MetadataValue::<Ascii>::try_from(org.as_str()).ok();
        Self {
            transport: self.transport.clone(),
            auth: BearerAuth {
                token: self.auth.token.clone(),
                on_behalf_of: value,
            },
        }
    }

    /// The endpoint and credential for one broker address.
    fn endpoint(options: &ConnectOptions) -> Result<(Endpoint, BearerAuth), ClientError> {
        let addr = match (&options.tls, options.addr.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => options.addr.clone(),
        };
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| ClientError::Address {
                addr: addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(options.connect_timeout.unwrap_or(Duration::from_secs(5)))
            .tcp_nodelay(true);
        if let Some(files) = &options.tls {
            endpoint = endpoint
                .tls_config(client_tls(files)?)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        let auth = match &options.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::Token)?,
            ),
            None => None,
        };
        Ok((
            endpoint,
            BearerAuth {
                token: auth,
                on_behalf_of: None,
            },
        ))
    }

    /// The trusts' service.
    pub fn requests(&self) -> RequestServiceClient<Authed> {
        RequestServiceClient::with_interceptor(self.transport.clone(), self.auth.clone())
    }

    /// The labs' service.
    pub fn labs(&self) -> LabServiceClient<Authed> {
        LabServiceClient::with_interceptor(self.transport.clone(), self.auth.clone())
    }

    /// The coordinators' service.
    pub fn coordinator(&self) -> CoordinatorServiceClient<Authed> {
        CoordinatorServiceClient::with_interceptor(self.transport.clone(), self.auth.clone())
    }

    /// The directory.
    pub fn directory(&self) -> DirectoryServiceClient<Authed> {
        DirectoryServiceClient::with_interceptor(self.transport.clone(), self.auth.clone())
    }

    /// The channel to the broker calls go to now (for health and reflection clients).
    pub fn channel(&self) -> Channel {
        self.transport.channel()
    }

    /// This trust's requests, newest first, in these states and priorities (empty for all), at
    /// most `limit` (0 means 100). Follows the broker's pages: with filters a page may come back
    /// short, even empty, while more follow.
    pub async fn list_requests(
        &self,
        states: &[proto::RequestState],
        priorities: &[proto::Priority],
        limit: u32,
    ) -> Result<Vec<proto::Request>, Status> {
        collect_pages(limit, |page_size, page_token| {
            let mut client = self.requests();
            let request = proto::ListRequestsRequest {
                states: states.iter().map(|s| *s as i32).collect(),
                priorities: priorities.iter().map(|p| *p as i32).collect(),
                page_size,
                page_token,
                order_number: String::new(),
            };
            async move {
                let page = client.list_requests(request).await?.into_inner();
                Ok((page.requests, page.next_page_token))
            }
        })
        .await
    }

    /// This trust's request with this order number, if it has one (following the broker's
    /// pages, which may come back empty while more follow).
    pub async fn request_by_order(
        &self,
        order_number: &str,
    ) -> Result<Option<proto::Request>, Status> {
        let found = collect_pages(1, |page_size, page_token| {
            let mut client = self.requests();
            let request = proto::ListRequestsRequest {
                page_size,
                page_token,
                order_number: order_number.to_string(),
                ..Default::default()
            };
            async move {
                let page = client.list_requests(request).await?.into_inner();
                Ok((page.requests, page.next_page_token))
            }
        })
        .await?;
        Ok(found.into_iter().next())
    }

    /// Opens this lab's Work stream, watching as `watch` asks: the sender of its actions (up to
    /// `queued` wait to be sent; the broker reads more only as earlier ones finish), and the
    /// lab's events and the actions' answers, in the order the broker sends them.
    pub async fn work(
        &self,
        watch: proto::WatchOffersRequest,
        queued: usize,
    ) -> Result<(WorkSender, Streaming<proto::WorkResponse>), Status> {
        let (actions, outbound) = mpsc::channel(queued.max(1) + 1);
        // Room for it was made above, and the receiver is held below.
        let _ = actions.try_send(tagged(0, proto::work_request::Action::Watch(watch)));
        let replies = self
            .labs()
            .work(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        Ok((WorkSender(actions), replies))
    }

    /// This lab's jobs, newest first, like [`Client::list_requests`].
    pub async fn list_jobs(
        &self,
        states: &[proto::RequestState],
        priorities: &[proto::Priority],
        limit: u32,
    ) -> Result<Vec<proto::Job>, Status> {
        collect_pages(limit, |page_size, page_token| {
            let mut client = self.labs();
            let request = proto::ListJobsRequest {
                states: states.iter().map(|s| *s as i32).collect(),
                priorities: priorities.iter().map(|p| *p as i32).collect(),
                page_size,
                page_token,
            };
            async move {
                let page = client.list_jobs(request).await?.into_inner();
                Ok((page.jobs, page.next_page_token))
            }
        })
        .await
    }
}

/// Sends tagged actions on a lab's open Work stream; dropping it closes the lab's side (events
/// and answers still come).
#[derive(Debug, Clone)]
pub struct WorkSender(mpsc::Sender<proto::WorkRequest>);

impl WorkSender {
    /// Queues an action, waiting for room; false once the stream has ended.
    pub async fn send(&self, tag: u64, action: proto::work_request::Action) -> bool {
        self.0.send(tagged(tag, action)).await.is_ok()
    }

    /// Queues an action without waiting; false when the queue is full or the stream has ended.
    pub fn try_send(&self, tag: u64, action: proto::work_request::Action) -> bool {
        self.0.try_send(tagged(tag, action)).is_ok()
    }
}

fn tagged(tag: u64, action: proto::work_request::Action) -> proto::WorkRequest {
    proto::WorkRequest {
        tag,
        action: Some(action),
    }
}

/// Asks for pages (the size still wanted, the token) until `limit` items (0 means 100, as the
/// broker reads it) or the last page.
async fn collect_pages<T, F, Fut>(limit: u32, mut page: F) -> Result<Vec<T>, Status>
where
    F: FnMut(u32, String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let limit = if limit == 0 { 100 } else { limit };
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let wanted = limit.saturating_sub(u32::try_from(found.len()).unwrap_or(u32::MAX));
        let (items, next) = page(wanted, token).await?;
        found.extend(items);
        if next.is_empty() || found.len() >= limit as usize {
            found.truncate(limit as usize);
            return Ok(found);
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `pages` in turn, recording what each call asked for.
    async fn listing(limit: u32, pages: &[(&[u32], &str)]) -> (Vec<u32>, Vec<(u32, String)>) {
        let mut asked = Vec::new();
        let mut served = pages.iter();
        let found = collect_pages(limit, |size, token| {
            asked.push((size, token));
            let (items, next) = served.next().expect("asked past the last page");
            std::future::ready(Ok((items.to_vec(), next.to_string())))
        })
        .await
        .expect("listed");
        (found, asked)
    }

    #[tokio::test]
    async fn pages_are_followed_through_short_and_empty_ones_until_the_limit() {
        let pages: &[(&[u32], &str)] = &[(&[], "a"), (&[1], "b"), (&[], "c"), (&[2, 3], "d")];
        let (found, asked) = listing(3, pages).await;
        assert_eq!(found, [1, 2, 3]);
        let want = [(3, ""), (3, "a"), (2, "b"), (2, "c")];
        assert_eq!(asked, want.map(|(n, t)| (n, t.to_string())));

        // The last page ends the listing, however short.
        let (found, asked) = listing(0, &[(&[7], "x"), (&[], "")]).await;
        assert_eq!((found, asked.len()), (vec![7], 2));
        assert_eq!(asked[0].0, 100);
    }
}
