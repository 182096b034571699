//! `tenantgate-mcp-echo`: a small MCP server built with rmcp, for gateway tests
//! and `make bench-mcp`.
//!
//! Tools: `echo` (returns its `text`; with `log` set to a level, first sends
//! a log message of that level from logger `echo-server` when it is at or
//! above the level the client set with `logging/setLevel`), `slow` (sleeps `ms`, sending progress, and
//! stops when cancelled), `grow` (adds the tool `extra` and announces
//! `notifications/tools/list_changed`), `secret_delete` (for deny-glob tests).
//! One prompt `greet`, one resource `echo://static/hello`.
//!
//! Every `tools/call` it receives (any name, even unknown ones) is counted; the
//! count is served at `GET /calls` (HTTP mode) so tests can prove that a call
//! the gateway refused never reached this server. `GET /cancelled` counts
//! `slow` calls that were cancelled; `GET /last-auth` is the last MCP request's
//! `Authorization` header, `GET /last-traceparent` the last W3C `traceparent` one carried;
//! `GET /log-level` the level the last
//! `logging/setLevel` asked for; with `--require-auth` a request without one gets 401.
#![allow(deprecated)] // logging (rmcp marks it deprecated, SEP-2577): the gateway passes it on for 2025 clients

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::response::IntoResponse;
use clap::Parser;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, ListPromptsResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, Prompt, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, Role, ServerCapabilities, ServerConfig,
    SetLevelRequestParams, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

/// A fast MCP echo server.
#[derive(Debug, Parser)]
struct Args {
    /// Serve streamable HTTP at `/mcp` on this address (default: stdio).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Tools per page of `tools/list` (exercises pagination).
    #[arg(long, default_value_t = 2)]
    page_size: usize,
    /// Answer 401 to MCP requests without an `Authorization` header (an
    /// upstream that lists nothing anonymously).
    #[arg(long)]
    require_auth: bool,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    cancelled: AtomicU64,
    grown: AtomicBool,
    /// The `Authorization` header of the last MCP request (tests of upstream credentials).
    last_auth: std::sync::Mutex<String>,
    /// The level the last `logging/setLevel` asked for.
    log_level: std::sync::Mutex<Option<LoggingLevel>>,
    /// The W3C `traceparent` header of the last MCP request that had one (trace tests).
    last_traceparent: std::sync::Mutex<String>,
}

/// The severity of a log level: rmcp declares them from debug (lowest) to emergency.
fn severity(level: LoggingLevel) -> u8 {
    level as u8
}

#[derive(Debug, Clone)]
struct Echo {
    counters: Arc<Counters>,
    page_size: usize,
}

fn schema(v: Value) -> Arc<serde_json::Map<String, Value>> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(serde_json::Map::new()),
    }
}

impl Echo {
    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            Tool::new(
                "echo",
                "Returns the text it is given",
                schema(json!({"type": "object", "properties": {"text": {"type": "string"}}})),
            ),
            Tool::new(
                "slow",
                "Sleeps `ms` milliseconds, reporting progress",
                schema(json!({"type": "object", "properties": {"ms": {"type": "integer"}}})),
            ),
            Tool::new("grow", "Adds the tool `extra`", schema(json!({"type": "object"}))),
            Tool::new(
                "secret_delete",
                "Must never be reachable through the gateway",
                schema(json!({"type": "object"})),
            ),
        ];
        if self.counters.grown.load(Ordering::Acquire) {
            tools.push(Tool::new("extra", "Appeared after grow", schema(json!({"type": "object"}))));
        }
        tools
    }
}

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_resources()
                .enable_logging()
                .build(),
        )
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.counters.log_level.lock().map_err(|_| ErrorData::internal_error("poisoned", None))? = Some(request.level);
        Ok(())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let start: usize = request.and_then(|r| r.cursor).and_then(|c| c.parse().ok()).unwrap_or(0);
        let tools = self.tools();
        let end = (start + self.page_size.max(1)).min(tools.len());
        let mut result = ListToolsResult::with_all_items(tools.get(start..end).unwrap_or_default().to_vec());
        result.next_cursor = (end < tools.len()).then(|| end.to_string());
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.counters.calls.fetch_add(1, Ordering::AcqRel);
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "echo" => {
                let text = args.get("text").and_then(Value::as_str).unwrap_or_default();
                if let Some(level) = args.get("log") {
                    let level: LoggingLevel = serde_json::from_value(level.clone())
                        .map_err(|e| ErrorData::invalid_params(format!("log: {e}"), None))?;
                    let least = self.counters.log_level.lock().ok().and_then(|l| *l);
                    if least.is_none_or(|least| severity(level) >= severity(least)) {
                        let message = LoggingMessageNotificationParam::new(level, json!({"text": text}))
                            .with_logger("echo-server");
                        let _ = context.peer.notify_logging_message(message).await;
                    }
                }
                CallToolResult::success(vec![ContentBlock::text(text.to_string())])
            }
            "slow" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(100);
                let token = context.meta.get_progress_token();
                let steps = 4u64;
                for step in 1..=steps {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(ms / steps)) => {}
                        () = context.ct.cancelled() => {
                            self.counters.cancelled.fetch_add(1, Ordering::AcqRel);
                            return Err(ErrorData::internal_error("cancelled", None));
                        }
                    }
                    if let Some(token) = token.clone() {
                        let _ = context
                            .peer
                            .notify_progress(
                                rmcp::model::ProgressNotificationParam::new(token, step as f64)
                                    .with_total(steps as f64),
                            )
                            .await;
                    }
                }
                CallToolResult::success(vec![ContentBlock::text(format!("slept {ms} ms"))])
            }
            "grow" => {
                self.counters.grown.store(true, Ordering::Release);
                let _ = context.peer.notify_tool_list_changed().await;
                CallToolResult::success(vec![ContentBlock::text("grown")])
            }
            "extra" if self.counters.grown.load(Ordering::Acquire) => {
                CallToolResult::success(vec![ContentBlock::text("extra")])
            }
            "secret_delete" => CallToolResult::success(vec![ContentBlock::text("deleted everything")]),
            other => return Err(ErrorData::invalid_params(format!("unknown tool {other}"), None)),
        };
        Ok(result.into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new("greet", Some("Greets someone"), None)]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != "greet" {
            return Err(ErrorData::invalid_params(format!("unknown prompt {}", request.name), None));
        }
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, "Hello from echo")]).into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let r = Resource::new("echo://static/hello", "hello");
        Ok(ListResourcesResult::with_all_items(vec![r]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != "echo://static/hello" {
            return Err(ErrorData::resource_not_found(format!("no resource {}", request.uri), None));
        }
        Ok(ReadResourceResult::new(vec![ResourceContents::text("hello, world", request.uri)]).into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let echo = Echo { counters: Arc::new(Counters::default()), page_size: args.page_size };
    let Some(listen) = args.listen else {
        let running = echo.serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        return Ok(());
    };
    let counters = echo.counters.clone();
    let service = StreamableHttpService::new(
        move || Ok(echo.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None).disable_allowed_hosts(),
    );
    let calls = counters.clone();
    let cancelled = counters.clone();
    let auth = counters.clone();
    let seen = counters.clone();
    let level = counters.clone();
    let traced = counters.clone();
    let require_auth = args.require_auth;
    let app = axum::Router::new()
        .route("/calls", axum::routing::get(move || async move { calls.calls.load(Ordering::Acquire).to_string() }))
        .route(
            "/cancelled",
            axum::routing::get(move || async move { cancelled.cancelled.load(Ordering::Acquire).to_string() }),
        )
        .route(
            "/last-auth",
            axum::routing::get(move || async move { auth.last_auth.lock().map(|a| a.clone()).unwrap_or_default() }),
        )
        .route(
            "/last-traceparent",
            axum::routing::get(
                move || async move { traced.last_traceparent.lock().map(|t| t.clone()).unwrap_or_default() },
            ),
        )
        .route(
            "/log-level",
            axum::routing::get(move || async move {
                let current = level.log_level.lock().ok().and_then(|l| *l);
                current
                    .and_then(|l| serde_json::to_value(l).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            }),
        )
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                if require_auth && request.uri().path() == "/mcp" && !request.headers().contains_key("authorization") {
                    return axum::http::StatusCode::UNAUTHORIZED.into_response();
                }
                if request.uri().path() == "/mcp"
                    && let Some(v) = request.headers().get("authorization").and_then(|v| v.to_str().ok())
                    && let Ok(mut last) = seen.last_auth.lock()
                {
                    *last = v.to_string();
                }
                if request.uri().path() == "/mcp"
                    && let Some(v) = request.headers().get("traceparent").and_then(|v| v.to_str().ok())
                    && let Ok(mut last) = seen.last_traceparent.lock()
                {
                    *last = v.to_string();
                }
                next.run(request).await
            }
        }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    // Like most production HTTP servers (Node's included): no Nagle delay on small SSE writes.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
