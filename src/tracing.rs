//! Spans as heap labels (feature `tracing`): [`HeapLabelsLayer`], a [`tracing_subscriber::Layer`] that makes
//! chosen fields of [`tracing`](https://docs.rs/tracing) spans the heap labels of whatever runs inside them,
//! so that a service already instrumented with spans (`#[instrument]`, tower-http's `TraceLayer` and its
//! `http.route`) gets heap profiles broken down by route or tenant without labelling anything by hand:
//! `go tool pprof -tags heap.pb.gz`, `go tool pprof -tagfocus=http.route=/upload -top heap.pb.gz`.
//!
//! This is Go's way of carrying profiler labels in the request's context (`pprof.Do(ctx, labels, f)`), with
//! the span as the context: a span entered labels the thread until it exits, and an instrumented future
//! enters its span around every poll, so its allocations carry the span's labels on whatever worker thread
//! polls it.
//!
//! ```
//! use heap_sampler::LabelSet;
//! use heap_sampler::tracing::HeapLabelsLayer;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let subscriber = tracing_subscriber::registry()
//!     .with(HeapLabelsLayer::new().field("http.route").field("tenant"));
//! tracing::subscriber::with_default(subscriber, || {
//!     let request = tracing::info_span!("request", http.route = "/upload/{id}", method = "PUT");
//!     let _request = request.enter();
//!     // Allocations sampled here carry http.route=/upload/{id}; `method` is not a chosen field.
//!     let tenant = tracing::info_span!("auth", tenant = %"acme", attempt = 1);
//!     let _tenant = tenant.enter();
//!     // Here http.route=/upload/{id} and tenant=acme.
//!     let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
//!         pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect()
//!     };
//!     assert_eq!(
//!         LabelSet::current().pairs(),
//!         owned(&[("http.route", "/upload/{id}"), ("tenant", "acme")])
//!     );
//! });
//! assert_eq!(LabelSet::current(), LabelSet::EMPTY);
//! ```
//!
//! Futures carry their span's labels wherever they are polled, as [`heap_sampler::labeled`](crate::labeled)
//! does:
//!
//! ```
//! use tracing::Instrument;
//!
//! # async fn upload(body: &[u8]) -> usize { body.len() }
//! async fn handle(tenant: &str, body: &[u8]) -> usize {
//!     upload(body).instrument(tracing::info_span!("upload", tenant)).await
//! }
//! ```

use core::cell::RefCell;
use core::fmt::{self, Write as _};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::labels::{self, LabelSet};
use crate::sampler::Guard;

/// A [`tracing_subscriber::Layer`] that makes chosen span fields heap labels: pprof string labels on every
/// allocation sampled while the span is entered (see [`LabelSet`] for labels in profiles).
///
/// # Which fields
///
/// - [`field`](Self::field)`(name)`: the field `name` of any span, e.g. `http.route`, `tenant`.
/// - [`span_name`](Self::span_name)`(name)`: every field of the spans named `name`.
///
/// The label's key is the field's name; its value is the field's text: `&str` values and `%`-recorded
/// ([`Display`](core::fmt::Display)) values as they are, numbers and bools as their text, errors by their
/// `Display`, `?`-recorded values by their `Debug` text (quoted, for strings). Fields declared without a
/// value (`tracing::field::Empty`) label nothing until recorded. As with [`LabelSet`], empty values and the
/// key `bytes` are ignored.
///
/// # A span's labels
///
/// A span's label set is computed once, when the span is created, and again when a chosen field is recorded
/// later (`Span::record`). It is the span's chosen fields added to (replacing the same keys in):
///
/// - for a span created in the current context (the usual case), the labels current on the thread where it
///   is created: its parent's labels while the parent is entered there, and any scope entered with
///   [`with_labels`](crate::with_labels), [`enter_labels`](crate::enter_labels) or
///   [`labeled`](crate::labeled);
/// - for a span with an explicit parent (`parent: &span`), that parent's labels;
/// - for an explicit root (`parent: None`), nothing.
///
/// A span thus carries its ancestors' labels wherever it is entered: a task spawned with
/// `.instrument(child_span)` is labelled on any worker. Recording a field updates the span's labels, not
/// those of children created before; it applies at once on a thread where the span is the innermost entered
/// one, elsewhere from the span's next entry.
///
/// # Entering and exiting
///
/// Entering a span that has labels makes its set the thread's labels; exiting it restores the set it
/// replaced. Spans may exit out of order, as tracing allows: the labels in force are always those of the
/// innermost span still entered. Entering a span without labels changes nothing. A span's labels replace the
/// thread's scope while it is entered, so enter a [`LabelGuard`](crate::LabelGuard) scope inside spans, not
/// around them, or create the span inside the scope (it then inherits it).
///
/// # Costs
///
/// Creating a span with labels interns its set (a lock, a hash map lookup and a few allocations, unsampled),
/// as [`LabelSet::with`] does, and stores it in the span's extensions; nothing is stored for a span that
/// neither has chosen fields nor inherits labels. Entering a span looks it up in the registry and reads its extensions;
/// when it has labels, one push on a per-thread stack and one thread-local store, and exiting pops. Nothing
/// is interned on entry or exit. The allocator reads the labels only when it samples an allocation.
/// `benches/span_labels.rs` measures what the layer adds to an enter/exit.
///
/// Every distinct set is kept for the life of the process: choose fields with few values (a route template,
/// a tenant, a component), not request ids or raw paths. Past [`set_max_label_sets`](crate::set_max_label_sets),
/// allocations in spans that would need a new set are sampled without labels and counted in
/// [`Stats::dropped_labels`](crate::Stats::dropped_labels).
#[derive(Clone, Debug, Default)]
pub struct HeapLabelsLayer {
    fields: Vec<Box<str>>,
    span_names: Vec<Box<str>>,
}

impl HeapLabelsLayer {
    /// A layer that labels nothing yet: choose fields with [`field`](Self::field) and spans with
    /// [`span_name`](Self::span_name).
    pub fn new() -> HeapLabelsLayer {
        HeapLabelsLayer::default()
    }

    /// Makes the field `name` of any span a label, keyed by `name` (e.g. `http.route`).
    pub fn field(mut self, name: &str) -> HeapLabelsLayer {
        if !self.fields.iter().any(|field| **field == *name) {
            self.fields.push(name.into());
        }
        self
    }

    /// Makes every field of the spans named `name` a label.
    pub fn span_name(mut self, name: &str) -> HeapLabelsLayer {
        if !self.span_names.iter().any(|span| **span == *name) {
            self.span_names.push(name.into());
        }
        self
    }

    /// Whether every field of the spans of `metadata` is a label.
    fn labels_every_field(&self, metadata: &Metadata<'_>) -> bool {
        self.span_names
            .iter()
            .any(|name| **name == *metadata.name())
    }

    fn is_chosen(&self, field: &Field) -> bool {
        self.fields.iter().any(|name| **name == *field.name())
    }

    /// `base` with the chosen fields that `record` visits added.
    fn with_fields(
        &self,
        base: LabelSet,
        every_field: bool,
        record: impl FnOnce(&mut dyn Visit),
    ) -> LabelSet {
        let mut values = FieldValues {
            layer: self,
            every_field,
            text: String::new(),
            fields: Vec::new(),
        };
        record(&mut values);
        if values.fields.is_empty() {
            return base;
        }
        let pairs: Vec<(&str, &str)> = values
            .fields
            .iter()
            .map(|&(key, start, end)| (key, &values.text[start..end]))
            .collect();
        base.with(&pairs)
    }
}

/// A span's label set, in its extensions; only spans whose set is not empty have one.
struct SpanLabels(LabelSet);

fn labels_of<'a, S: LookupSpan<'a>>(span: &SpanRef<'a, S>) -> LabelSet {
    span.extensions()
        .get::<SpanLabels>()
        .map_or(LabelSet::EMPTY, |labels| labels.0)
}

/// A span with labels entered on this thread, and the labels its entry replaced.
struct Entered {
    span: u64,
    previous: LabelSet,
}

/// How many more entries the per-thread stack makes room for when it is full.
const ENTERED_GROWTH: usize = 8;

thread_local! {
    /// The spans with labels entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<Entered>> = const { RefCell::new(Vec::new()) };
}

/// The text of the chosen fields that a span's attributes or record visit: one string of values, and each
/// field's name and range in it.
struct FieldValues<'a> {
    layer: &'a HeapLabelsLayer,
    every_field: bool,
    text: String,
    fields: Vec<(&'static str, usize, usize)>,
}

impl FieldValues<'_> {
    fn add(&mut self, field: &Field, write: impl FnOnce(&mut String)) {
        if self.every_field || self.layer.is_chosen(field) {
            let start = self.text.len();
            write(&mut self.text);
            self.fields.push((field.name(), start, self.text.len()));
        }
    }
}

impl Visit for FieldValues<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, |text| text.push_str(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, |text| {
            let _ = write!(text, "{value}");
        });
    }

    /// Numbers and bools come here too, formatted by `Debug` as their plain text; `%` values are wrapped in
    /// a `Debug` that writes their `Display`.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, |text| {
            let _ = write!(text, "{value:?}");
        });
    }
}

impl<S> Layer<S> for HeapLabelsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let base = if attrs.is_contextual() {
            LabelSet::current()
        } else {
            attrs
                .parent()
                .and_then(|parent| ctx.span(parent))
                .map_or(LabelSet::EMPTY, |parent| labels_of(&parent))
        };
        let metadata = attrs.metadata();
        let every_field = self.labels_every_field(metadata);
        let own = every_field || metadata.fields().iter().any(|f| self.is_chosen(&f));
        if !own && base == LabelSet::EMPTY {
            return;
        }
        // Interning and the extension are the profiler's own memory: not sampled.
        let _guard = Guard::enter();
        let set = if own {
            self.with_fields(base, every_field, |visitor| attrs.record(visitor))
        } else {
            base
        };
        if set != LabelSet::EMPTY
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().replace(SpanLabels(set));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let metadata = span.metadata();
        let every_field = self.labels_every_field(metadata);
        if !every_field
            && !metadata
                .fields()
                .iter()
                .any(|f| values.contains(&f) && self.is_chosen(&f))
        {
            return;
        }
        let _guard = Guard::enter();
        let old = labels_of(&span);
        let set = self.with_fields(old, every_field, |visitor| values.record(visitor));
        if set == old {
            return;
        }
        span.extensions_mut().replace(SpanLabels(set));
        if ctx.current_span().id() != Some(id) {
            return;
        }
        // The span is the innermost entered on this thread: its new labels apply now. If it had none when
        // entered, it was not pushed: push it, so that its exit restores the labels it now replaces.
        let span = id.into_u64();
        let _ = ENTERED.try_with(|entered| {
            let Ok(mut entered) = entered.try_borrow_mut() else {
                return;
            };
            if entered.last().is_none_or(|top| top.span != span) {
                entered.push(Entered {
                    span,
                    previous: LabelSet::current(),
                });
            }
            labels::set_current(set);
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let set = labels_of(&span);
        if set == LabelSet::EMPTY {
            return;
        }
        let span = id.into_u64();
        let _ = ENTERED.try_with(|entered| {
            // A span entered while the stack is borrowed (by a global allocator that enters spans, while the
            // stack grows) is skipped; its exit, not finding it, does nothing.
            let Ok(mut entered) = entered.try_borrow_mut() else {
                return;
            };
            if entered.len() == entered.capacity() {
                // The stack is the profiler's own memory: not sampled, nor charged to the labels in force.
                let _guard = Guard::enter();
                entered.reserve(ENTERED_GROWTH);
            }
            entered.push(Entered {
                span,
                previous: LabelSet::current(),
            });
            labels::set_current(set);
        });
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        let span = id.into_u64();
        let _ = ENTERED.try_with(|entered| {
            let Ok(mut entered) = entered.try_borrow_mut() else {
                return;
            };
            let Some(at) = entered.iter().rposition(|e| e.span == span) else {
                return;
            };
            let Entered { previous, .. } = entered.remove(at);
            match entered.get_mut(at) {
                // An inner span is still entered: its labels stay in force, and it restores these on exit.
                Some(inner) => inner.previous = previous,
                None => labels::set_current(previous),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tracing::{Instrument, field, info_span};
    use tracing_subscriber::layer::SubscriberExt;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn current() -> Vec<(String, String)> {
        LabelSet::current().pairs()
    }

    fn with_layer<R>(layer: HeapLabelsLayer, f: impl FnOnce() -> R) -> R {
        let subscriber = tracing_subscriber::registry().with(layer);
        ::tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn chosen_fields_and_span_names_become_labels() {
        let layer = HeapLabelsLayer::new()
            .field("unit.route")
            .field("unit-n")
            .span_name("unit-all");
        with_layer(layer, || {
            let unchosen = info_span!("unit-any", unit.other = "x", route = "y");
            let chosen = info_span!("unit-any", unit.route = "/a/{id}", "unit-n" = 3, other = 1);
            let all = info_span!(
                "unit-all",
                s = "text",
                d = %"shown",
                q = ?"quoted",
                n = 42u64,
                neg = -3i64,
                f = 1.5,
                b = true,
                e = field::Empty
            );
            unchosen.in_scope(|| assert_eq!(current(), owned(&[])));
            chosen.in_scope(|| {
                assert_eq!(
                    current(),
                    owned(&[("unit-n", "3"), ("unit.route", "/a/{id}")])
                )
            });
            all.in_scope(|| {
                assert_eq!(
                    current(),
                    owned(&[
                        ("b", "true"),
                        ("d", "shown"),
                        ("f", "1.5"),
                        ("n", "42"),
                        ("neg", "-3"),
                        ("q", "\"quoted\""),
                        ("s", "text"),
                    ])
                )
            });
            assert_eq!(current(), owned(&[]));
        });
    }

    #[test]
    fn children_inherit_and_override_their_parents_labels() {
        with_layer(
            HeapLabelsLayer::new().field("unit-k").field("unit-j"),
            || {
                let parent = info_span!("p", "unit-k" = "parent", "unit-j" = "j");
                let child = parent.in_scope(|| info_span!("c", "unit-k" = "child", other = 2));
                let plain = parent.in_scope(|| info_span!("plain"));
                let explicit = info_span!(parent: &parent, "e");
                let root = parent.in_scope(|| info_span!(parent: None, "r", other = 1));
                // Entered on their own, away from the parent: they carry what they inherited.
                child.in_scope(|| {
                    assert_eq!(current(), owned(&[("unit-j", "j"), ("unit-k", "child")]))
                });
                for inherits in [&plain, &explicit] {
                    inherits.in_scope(|| {
                        assert_eq!(current(), owned(&[("unit-j", "j"), ("unit-k", "parent")]))
                    });
                }
                root.in_scope(|| assert_eq!(current(), owned(&[])));
                // A span created in a label scope inherits the scope.
                let scoped = crate::with_labels(&[("unit-scope", "s")], || info_span!("s"));
                scoped.in_scope(|| assert_eq!(current(), owned(&[("unit-scope", "s")])));
            },
        );
    }

    #[test]
    fn out_of_order_exits_leave_the_innermost_spans_labels() {
        with_layer(HeapLabelsLayer::new().field("unit-o"), || {
            let a = info_span!("a", "unit-o" = "a");
            let b = info_span!("b", "unit-o" = "b");
            let a_entered = a.enter();
            let b_entered = b.enter();
            assert_eq!(current(), owned(&[("unit-o", "b")]));
            drop(a_entered);
            assert_eq!(current(), owned(&[("unit-o", "b")]));
            drop(b_entered);
            assert_eq!(current(), owned(&[]));
            // Re-entering a span already entered, then exits in order.
            let first = a.enter();
            let again = a.enter();
            drop(again);
            assert_eq!(current(), owned(&[("unit-o", "a")]));
            drop(first);
            assert_eq!(current(), owned(&[]));
        });
    }

    #[test]
    fn recorded_fields_update_the_labels() {
        with_layer(HeapLabelsLayer::new().field("unit-t"), || {
            let span = info_span!("r", "unit-t" = field::Empty);
            let entered = span.enter();
            assert_eq!(current(), owned(&[]));
            span.record("unit-t", "late");
            assert_eq!(current(), owned(&[("unit-t", "late")]));
            span.record("unit-t", 7);
            assert_eq!(current(), owned(&[("unit-t", "7")]));
            drop(entered);
            assert_eq!(current(), owned(&[]));
            span.in_scope(|| assert_eq!(current(), owned(&[("unit-t", "7")])));
        });
    }

    #[test]
    fn instrumented_futures_carry_their_labels_across_threads() {
        let subscriber =
            tracing_subscriber::registry().with(HeapLabelsLayer::new().field("unit-f"));
        let dispatch = ::tracing::Dispatch::new(subscriber);
        let future = ::tracing::dispatcher::with_default(&dispatch, || {
            async { current() }.instrument(info_span!("f", "unit-f" = "v"))
        });
        let on_another_thread = std::thread::spawn(move || {
            ::tracing::dispatcher::with_default(&dispatch, || {
                let mut future = std::pin::pin!(future);
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let labels = future.as_mut().poll(&mut cx);
                (labels, current())
            })
        })
        .join()
        .unwrap();
        assert_eq!(
            on_another_thread,
            (
                std::task::Poll::Ready(owned(&[("unit-f", "v")])),
                owned(&[])
            )
        );
    }
}
