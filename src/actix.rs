//! [`http::Response`](crate::http::Response) as an actix-web 4 [`Responder`] (feature `actix`), so that an
//! actix-web handler can return what [`crate::http::handle`] answers.
//!
//! [`crate::http::handle`] blocks (for a dump's few milliseconds, or for the whole of a `seconds=N` window), so
//! call it through `web::block`, actix's pool of blocking threads:
//!
//! ```no_run
//! use actix_web::{App, HttpRequest, HttpServer, web};
//! use heap_sampler::http::{Response, handle, symbol};
//!
//! async fn pprof(request: HttpRequest) -> actix_web::Result<Response> {
//!     let (path, query) = (request.path().to_owned(), request.query_string().to_owned());
//!     Ok(web::block(move || handle(&path, &query)).await?)
//! }
//!
//! // pprof looks up here the addresses of a mapping it has no symbols for (actix bounds the body).
//! async fn lookup(body: web::Bytes) -> actix_web::Result<Response> {
//!     Ok(web::block(move || symbol(&body)).await?)
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! # actix_web::rt::System::new().block_on(async {
//! HttpServer::new(|| {
//!     App::new()
//!         .route("/debug/pprof/symbol", web::post().to(lookup))
//!         .route("/debug/pprof/{profile:.*}", web::get().to(pprof))
//! })
//! .bind("127.0.0.1:6060")?
//! .run()
//! .await
//! # })
//! # }
//! ```
//!
//! A window runs to its end on its blocking thread even when the client goes away, as with any handler of
//! one's own (see [`crate::http`]); bound what the route may hold, or use the axum router or the built-in
//! server, which end a window when its client disconnects.

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Responder};

impl Responder for crate::http::Response {
    type Body = BoxBody;

    /// The status, headers ([`crate::http::Response::headers`]) and body; a status HTTP cannot carry (the
    /// handler makes none) becomes 500.
    ///
    /// ```
    /// use actix_web::{Responder, test::TestRequest};
    ///
    /// let answer = heap_sampler::http::handle("/debug/pprof/goroutine", "");
    /// let response = answer.respond_to(&TestRequest::default().to_http_request());
    /// assert_eq!(response.status().as_u16(), 404);
    /// assert_eq!(response.headers().get("x-go-pprof").unwrap(), "1");
    /// ```
    fn respond_to(self, _request: &HttpRequest) -> HttpResponse<BoxBody> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = HttpResponse::build(status);
        for (name, value) in self.headers() {
            response.insert_header((name, value.to_owned()));
        }
        response.body(self.body)
    }
}
