package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Errors of the Publisher.
var (
	// ErrFull is returned by Publish with NonBlocking when the publisher
	// holds as many events as it may.
	ErrFull = errors.New("client: publisher is full")
	// ErrClosed is returned by Publish and Flush after Close, and given to
	// OnError for every event that Close had to give up on.
	ErrClosed = errors.New("client: publisher is closed")
	// ErrInvalidEvent is returned by Publish for an event that cannot even
	// be encoded (nil, or a string field that is not UTF-8).
	ErrInvalidEvent = errors.New("client: invalid event")
)

// PublisherOption configures NewPublisher.
type PublisherOption func(*publisherConfig)

type publisherConfig struct {
	maxBatch    int
	linger      time.Duration
	maxInFlight int
	nonBlocking bool
	backoffMin  time.Duration
	backoffMax  time.Duration
	onResult    func(*nudgev1.EventResult)
	onAction    func(*nudgev1.Action)
	onError     func(*nudgev1.Event, error)
}

// MaxBatch sets the most events per batch (one StreamRequest). Default 500.
// The server refuses batches of more than 5000 with InvalidArgument, which
// drops them (see OnError): do not go beyond.
func MaxBatch(n int) PublisherOption { return func(c *publisherConfig) { c.maxBatch = n } }

// Linger sets how long a batch that is not full waits for more events
// before it is sent. Default 5ms.
func Linger(d time.Duration) PublisherOption { return func(c *publisherConfig) { c.linger = d } }

// MaxInFlight sets the most batches sent and not yet acknowledged. When
// they are all in flight and the next batch is full, Publish blocks (or
// fails with ErrFull, see NonBlocking). Default 8, the server's default
// window per stream.
func MaxInFlight(n int) PublisherOption { return func(c *publisherConfig) { c.maxInFlight = n } }

// NonBlocking makes Publish return ErrFull at once instead of waiting for
// room.
func NonBlocking() PublisherOption { return func(c *publisherConfig) { c.nonBlocking = true } }

// ReconnectBackoff sets the bounds of the jittered exponential backoff
// between stream attempts after a failure. Default 50ms and 5s. A failure
// whose status carries a google.rpc.RetryInfo (the server's
// RESOURCE_EXHAUSTED over a token's events rate) waits that delay instead,
// plus up to a tenth of it as jitter, even beyond the maximum: sooner, the
// server would only refuse again.
func ReconnectBackoff(min, max time.Duration) PublisherOption {
	return func(c *publisherConfig) { c.backoffMin, c.backoffMax = min, max }
}

// OnResult receives every event's result (APPLIED, DUPLICATE or REJECTED
// with its reason). Default: none.
func OnResult(f func(*nudgev1.EventResult)) PublisherOption {
	return func(c *publisherConfig) { c.onResult = f }
}

// OnAction receives the actions the events triggered. An action can be
// delivered again when its batch had to be re-sent and the server applied
// it anew; its ActionId is stable, deduplicate on it. Default: none.
func OnAction(f func(*nudgev1.Action)) PublisherOption {
	return func(c *publisherConfig) { c.onAction = f }
}

// OnError receives every event the publisher gives up on, with the reason:
//   - the status error of a batch the server refused as a whole
//     (InvalidArgument, never retried);
//   - the status error of a stream the server refused for its credentials
//     (Unauthenticated: no or an unknown token; PermissionDenied: the token
//     lacks the ingest role), for every event the publisher held then: it
//     has stopped (see Publisher);
//   - ErrClosed for events still unacked when Close returned.
//
// Default: none (the events are only counted in Stats().Failed).
func OnError(f func(ev *nudgev1.Event, err error)) PublisherOption {
	return func(c *publisherConfig) { c.onError = f }
}

// Stats are a publisher's counters since it was created.
type Stats struct {
	Published  uint64 // events accepted by Publish
	Acked      uint64 // events with a result: Applied + Duplicate + Rejected
	Applied    uint64
	Duplicate  uint64
	Rejected   uint64
	Failed     uint64 // events given up on (see OnError)
	Resent     uint64 // events sent again on a new stream
	Reconnects uint64 // streams opened after the first
}

// Publisher sends events on one IngestService stream. See the package
// documentation for its guarantees and concurrency contract.
//
// A stream refused with Unauthenticated or PermissionDenied stops the
// publisher for good: no retry can succeed until the token or the server's
// configuration changes, and retrying would hide the error behind what
// looks like a hang. Every event it holds (sent or waiting) goes to
// OnError with that status error and counts in Stats().Failed; waiting and
// later Flush calls (so Close too) return the error, wrapped (status.Code
// finds its code), and Publish refuses further events with it. No event is
// dropped unreported. Close the publisher, then fix the configuration and
// start a new one.
type Publisher struct {
	ingest nudgev1.IngestServiceClient
	cfg    publisherConfig

	in chan item // Publish and Flush to the loop

	mu        sync.RWMutex // Publish holds it shared; Close exclusively to stop them
	closed    bool
	closing   chan struct{} // closed when Close stops taking events
	closeOnce sync.Once
	stop      chan struct{} // tells the loop to stop
	exited    chan struct{} // closed when the loop and its sessions are gone
	stopped   chan struct{} // closed when the loop gives up for good (see giveUp)
	stopErr   error         // why: set before stopped is closed

	published, acked, applied, duplicate, rejected, failed, resent, reconnects atomic.Uint64
}

// item is an event, or a flush marker.
type item struct {
	ev    *nudgev1.Event
	flush chan error
}

// NewPublisher starts a publisher. It opens its stream when it has
// something to send. Close it.
func (c *Client) NewPublisher(opts ...PublisherOption) *Publisher {
	cfg := publisherConfig{
		maxBatch:    500,
		linger:      5 * time.Millisecond,
		maxInFlight: 8,
		backoffMin:  50 * time.Millisecond,
		backoffMax:  5 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.maxBatch = max(cfg.maxBatch, 1)
	cfg.maxInFlight = max(cfg.maxInFlight, 1)
	cfg.backoffMin = max(cfg.backoffMin, time.Millisecond)
	cfg.backoffMax = max(cfg.backoffMax, cfg.backoffMin)
	p := &Publisher{
		ingest:  c.ingest,
		cfg:     cfg,
		in:      make(chan item, cfg.maxBatch),
		closing: make(chan struct{}),
		stop:    make(chan struct{}),
		exited:  make(chan struct{}),
		stopped: make(chan struct{}),
	}
	l := &loop{p: p, sessCh: make(chan sessMsg), outstanding: make(map[uint64]*batch), quit: make(chan struct{})}
	go l.run()
	return p
}

// Publish hands ev to the publisher, which sends it in a batch and re-sends
// it until the server acknowledges it. ev must not be modified afterwards.
// It blocks while the publisher is full (up to ctx), or returns ErrFull
// with NonBlocking. A nil error means the event will be acknowledged (see
// OnResult), reported to OnError, or lost only if the process dies. After
// the server refused the publisher's credentials it returns that error
// (see Publisher).
func (p *Publisher) Publish(ctx context.Context, ev *nudgev1.Event) error {
	if ev == nil {
		return fmt.Errorf("%w: nil", ErrInvalidEvent)
	}
	// Encoding fails for non-UTF-8 strings; such an event would fail its
	// stream on every attempt, so it is refused here.
	if _, err := proto.Marshal(ev); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	if err := p.stoppedErr(); err != nil {
		return err
	}
	it := item{ev: ev}
	if p.cfg.nonBlocking {
		select {
		case p.in <- it:
			p.published.Add(1)
			return nil
		default:
			return ErrFull
		}
	}
	// An event that gets in just as the loop gives up is not lost: the
	// loop keeps taking events and reports them to OnError.
	select {
	case p.in <- it:
		p.published.Add(1)
		return nil
	case <-p.stopped:
		return p.stoppedErr()
	case <-p.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stoppedErr is what Publish and Flush return once the loop has given up;
// nil before.
func (p *Publisher) stoppedErr() error {
	select {
	case <-p.stopped:
		return fmt.Errorf("client: publisher stopped, the server refused its stream: %w", p.stopErr)
	default:
		return nil
	}
}

// Flush sends what is waiting for a batch at once and waits until every
// event published before the call is acknowledged (or given up on), or ctx
// ends. It returns nil then, even if events were given up on (see
// OnError), except when the publisher has stopped because the server
// refused its credentials (see Publisher): then it returns that error.
func (p *Publisher) Flush(ctx context.Context) error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	// Also when the publisher has stopped: the flush goes through the
	// loop, which still runs until Close, behind the events that raced
	// in before the stop, so that when it returns every event published
	// before it has been reported (Stats, OnError). Returning at once
	// left some of them unreported for a moment.
	done := make(chan error, 1)
	select {
	case p.in <- item{flush: done}:
	case <-p.closing:
		p.mu.RUnlock()
		return ErrClosed
	case <-ctx.Done():
		p.mu.RUnlock()
		return ctx.Err()
	}
	p.mu.RUnlock()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close flushes (up to ctx), then closes the stream and stops the
// publisher's goroutines. Events still unacknowledged when ctx ends are
// reported to OnError with ErrClosed. It returns the flush's error. Calls
// after the first return ErrClosed.
func (p *Publisher) Close(ctx context.Context) error {
	first := false
	p.closeOnce.Do(func() { first = true })
	if !first {
		<-p.exited
		return ErrClosed
	}
	err := p.Flush(ctx)
	close(p.closing)
	p.mu.Lock() // waits out the Publish calls in progress
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	<-p.exited
	return err
}

// Stats returns the counters.
func (p *Publisher) Stats() Stats {
	return Stats{
		Published:  p.published.Load(),
		Acked:      p.acked.Load(),
		Applied:    p.applied.Load(),
		Duplicate:  p.duplicate.Load(),
		Rejected:   p.rejected.Load(),
		Failed:     p.failed.Load(),
		Resent:     p.resent.Load(),
		Reconnects: p.reconnects.Load(),
	}
}

// batch is a sealed StreamRequest waiting for its response.
type batch struct {
	req      *nudgev1.StreamRequest
	sentOn   uint64 // session id it was last sent on (0: never)
	everSent bool
}

// session is one Stream call.
type session struct {
	id       uint64
	cancel   context.CancelFunc
	sendq    chan *nudgev1.StreamRequest
	ready    bool
	inflight int // batches sent on it and unanswered
}

// sessMsg is what a session reports to the loop.
type sessMsg struct {
	id     uint64
	opened bool
	resp   *nudgev1.StreamResponse
	err    error
}

type flushWaiter struct {
	seq uint64 // done when no batch up to seq is unanswered
	ch  chan error
}

// loop is the publisher's state, owned by its one goroutine.
type loop struct {
	p      *Publisher
	sessCh chan sessMsg
	quit   chan struct{} // closed when the loop stops: sessions stop reporting
	wg     sync.WaitGroup

	cur         []*nudgev1.Event
	lingerT     *time.Timer
	lingerDue   bool
	forceSeal   bool
	nextSeq     uint64
	outstanding map[uint64]*batch
	waiters     []flushWaiter

	sess     *session
	lastID   uint64
	opened   int // sessions opened so far
	attempt  int // failed attempts since the last response
	backoffT *time.Timer
	suspects map[uint64]bool // batches to send one at a time after an InvalidArgument

	gaveUp error // the refused stream's status once the loop gave up (see giveUp)
}

func (l *loop) run() {
	p := l.p
	l.nextSeq = 1
	defer close(p.exited)
	for {
		l.seal()
		l.connect()
		l.send()
		l.checkWaiters()
		var in chan item
		if len(l.cur) < p.cfg.maxBatch {
			in = p.in
		}
		var lingerC, backoffC <-chan time.Time
		if l.lingerT != nil && !l.lingerDue {
			lingerC = l.lingerT.C
		}
		if l.backoffT != nil {
			backoffC = l.backoffT.C
		}
		select {
		case it := <-in:
			l.take(it)
		case <-lingerC:
			l.lingerDue = true
		case <-backoffC:
			l.backoffT = nil
		case m := <-l.sessCh:
			l.handle(m)
		case <-p.stop:
			l.shutdown()
			return
		}
	}
}

func (l *loop) take(it item) {
	if l.gaveUp != nil {
		// Stopped: only Publish and Flush calls that raced with giveUp
		// get here.
		if it.flush != nil {
			it.flush <- l.p.stoppedErr()
		} else {
			l.failEvents([]*nudgev1.Event{it.ev}, l.gaveUp)
		}
		return
	}
	if it.flush != nil {
		w := flushWaiter{seq: l.nextSeq - 1, ch: it.flush}
		if len(l.cur) > 0 {
			w.seq = l.nextSeq
			l.forceSeal = true
		}
		l.waiters = append(l.waiters, w)
		return
	}
	if len(l.cur) == 0 {
		if l.lingerT == nil {
			l.lingerT = time.NewTimer(l.p.cfg.linger)
		} else {
			l.lingerT.Reset(l.p.cfg.linger)
		}
		l.lingerDue = false
	}
	l.cur = append(l.cur, it.ev)
}

// seal turns the current events into a batch when it is due and the
// in-flight window has room.
func (l *loop) seal() {
	if len(l.cur) == 0 || len(l.outstanding) >= l.p.cfg.maxInFlight {
		return
	}
	if len(l.cur) < l.p.cfg.maxBatch && !l.lingerDue && !l.forceSeal {
		return
	}
	l.outstanding[l.nextSeq] = &batch{req: &nudgev1.StreamRequest{Seq: l.nextSeq, Events: l.cur}}
	l.nextSeq++
	l.cur = make([]*nudgev1.Event, 0, min(l.p.cfg.maxBatch, 1024))
	l.lingerDue, l.forceSeal = false, false
	if l.lingerT != nil {
		l.lingerT.Stop()
	}
}

// connect starts a session when there is something to send, none is up and
// no backoff is running.
func (l *loop) connect() {
	if l.sess != nil || l.backoffT != nil || len(l.outstanding) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.lastID++
	s := &session{id: l.lastID, cancel: cancel, sendq: make(chan *nudgev1.StreamRequest, l.p.cfg.maxInFlight)}
	l.sess = s
	l.wg.Add(1)
	go l.runSession(ctx, s)
}

// send sends the outstanding batches the session has not had, in seq
// order; one at a time while there are suspects of an InvalidArgument.
func (l *loop) send() {
	s := l.sess
	if s == nil || !s.ready {
		return
	}
	seqs := make([]uint64, 0, len(l.outstanding))
	for seq, b := range l.outstanding {
		if b.sentOn != s.id {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	for _, seq := range seqs {
		if len(l.suspects) > 0 && s.inflight > 0 {
			return
		}
		b := l.outstanding[seq]
		if b.everSent {
			l.p.resent.Add(uint64(len(b.req.Events)))
		}
		b.sentOn, b.everSent = s.id, true
		s.inflight++
		s.sendq <- b.req // never blocks: at most maxInFlight outstanding
	}
}

func (l *loop) handle(m sessMsg) {
	s := l.sess
	if s == nil || m.id != s.id {
		return // a session given up on
	}
	switch {
	case m.opened:
		s.ready = true
		if l.opened++; l.opened > 1 {
			l.p.reconnects.Add(1)
		}
	case m.resp != nil:
		l.attempt = 0
		b, ok := l.outstanding[m.resp.GetSeq()]
		if !ok || b.sentOn != s.id {
			return
		}
		delete(l.outstanding, m.resp.GetSeq())
		delete(l.suspects, m.resp.GetSeq())
		s.inflight--
		l.deliver(m.resp)
	default:
		l.fail(s, m.err)
	}
}

// fail ends a session that reported err and plans the next one.
func (l *loop) fail(s *session, err error) {
	s.cancel()
	l.sess = nil
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		// Credentials are fixed for the client's life and tokens for the
		// server's: every retry would be refused the same way.
		l.giveUp(err)
		return
	case codes.InvalidArgument:
		// The server answers every batch it read before the invalid one
		// and stops reading: a lone unanswered batch is the invalid one.
		if s.inflight == 1 {
			for seq, b := range l.outstanding {
				if b.sentOn == s.id {
					l.drop(seq, err)
				}
			}
			return // reconnect at once: the server is fine
		}
		if s.inflight > 1 {
			l.suspects = make(map[uint64]bool)
			for seq, b := range l.outstanding {
				if b.sentOn == s.id {
					l.suspects[seq] = true
				}
			}
			return
		}
	}
	var d time.Duration
	if delay, ok := retryDelay(err); ok {
		// The server said when it will take the batch (over a rate
		// limit): sooner it would refuse it again. The jitter spreads
		// publishers sharing a token.
		d = delay + rand.N(delay/10+1)
	} else {
		d = l.p.cfg.backoffMin << min(l.attempt, 20)
		d = min(d, l.p.cfg.backoffMax)
		d = d/2 + rand.N(d/2+1) // jitter: [d/2, d]
	}
	l.attempt++
	l.backoffT = time.NewTimer(d)
}

// retryDelay is the delay err's google.rpc.RetryInfo detail asks to wait
// before retrying; false when err has none.
func retryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return max(ri.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return 0, false
}

// giveUp stops the publisher for good after the server refused its stream
// with err (its credentials): every event held goes to OnError with err,
// waiting flushes and later Publish and Flush calls get it. The loop keeps
// running until Close, so that events that raced in are reported too.
func (l *loop) giveUp(err error) {
	l.gaveUp = err
	for _, seq := range slices.Sorted(maps.Keys(l.outstanding)) {
		l.drop(seq, err)
	}
	l.failEvents(l.cur, err)
	l.cur = nil
	// Only now: a Flush or Publish that sees the publisher stopped must
	// find every held event already reported (Stats, OnError).
	l.p.stopErr = err
	close(l.p.stopped)
	l.suspects = nil
	l.lingerDue, l.forceSeal = false, false
	if l.lingerT != nil {
		l.lingerT.Stop()
	}
	stopped := l.p.stoppedErr()
	for _, w := range l.waiters {
		w.ch <- stopped
	}
	l.waiters = nil
}

func (l *loop) drop(seq uint64, err error) {
	b := l.outstanding[seq]
	delete(l.outstanding, seq)
	delete(l.suspects, seq)
	l.failEvents(b.req.Events, err)
}

// failEvents gives up on evs: counted in Failed, each one given to OnError.
func (l *loop) failEvents(evs []*nudgev1.Event, err error) {
	if len(evs) == 0 {
		return
	}
	l.p.failed.Add(uint64(len(evs)))
	if f := l.p.cfg.onError; f != nil {
		for _, ev := range evs {
			f(ev, err)
		}
	}
}

func (l *loop) deliver(resp *nudgev1.StreamResponse) {
	p := l.p
	for _, r := range resp.GetResults() {
		p.acked.Add(1)
		switch r.GetStatus() {
		case nudgev1.EventStatus_EVENT_STATUS_APPLIED:
			p.applied.Add(1)
		case nudgev1.EventStatus_EVENT_STATUS_DUPLICATE:
			p.duplicate.Add(1)
		case nudgev1.EventStatus_EVENT_STATUS_REJECTED:
			p.rejected.Add(1)
		}
		if p.cfg.onResult != nil {
			p.cfg.onResult(r)
		}
	}
	if p.cfg.onAction != nil {
		for _, a := range resp.GetActions() {
			p.cfg.onAction(a)
		}
	}
}

// checkWaiters answers the flushes whose batches are all answered.
func (l *loop) checkWaiters() {
	if len(l.waiters) == 0 {
		return
	}
	low := l.nextSeq // lowest unanswered seq (nextSeq: the current events)
	if len(l.cur) == 0 {
		low++
	}
	for seq := range l.outstanding {
		low = min(low, seq)
	}
	kept := l.waiters[:0]
	for _, w := range l.waiters {
		if w.seq < low {
			w.ch <- nil
			continue
		}
		kept = append(kept, w)
	}
	l.waiters = kept
}

// shutdown gives up on what is left and stops the sessions.
func (l *loop) shutdown() {
drain:
	for {
		select {
		case it := <-l.p.in:
			switch {
			case l.gaveUp != nil:
				l.take(it) // the real reason, not ErrClosed
			case it.flush != nil:
				it.flush <- ErrClosed
			default:
				l.cur = append(l.cur, it.ev)
			}
		default:
			break drain
		}
	}
	seqs := slices.Sorted(maps.Keys(l.outstanding))
	for _, seq := range seqs {
		l.drop(seq, ErrClosed)
	}
	l.failEvents(l.cur, ErrClosed)
	for _, w := range l.waiters {
		w.ch <- ErrClosed
	}
	if l.sess != nil {
		l.sess.cancel()
	}
	close(l.quit)
	l.wg.Wait()
	if l.lingerT != nil {
		l.lingerT.Stop()
	}
	if l.backoffT != nil {
		l.backoffT.Stop()
	}
}

// runSession runs one Stream call: it opens it, sends what the loop
// queues and reports responses and the end.
func (l *loop) runSession(ctx context.Context, s *session) {
	defer l.wg.Done()
	defer s.cancel()
	report := func(m sessMsg) bool {
		m.id = s.id
		select {
		case l.sessCh <- m:
			return true
		case <-l.quit:
			return false
		}
	}
	stream, err := l.p.ingest.Stream(ctx, grpc.WaitForReady(true))
	if err != nil {
		report(sessMsg{err: err})
		return
	}
	if !report(sessMsg{opened: true}) {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case req := <-s.sendq:
				if err := stream.Send(req); err != nil {
					// io.EOF: the stream ended and Recv reports its
					// status. Anything else failed on this side: end
					// the stream so that Recv returns.
					if !errors.Is(err, io.EOF) {
						s.cancel()
					}
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			report(sessMsg{err: err})
			return
		}
		if !report(sessMsg{resp: resp}) {
			return
		}
	}
}
