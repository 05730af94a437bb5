package server

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// maxUndecoded bounds the decode failures remembered and not yet checked by
// an interceptor (see decodeFailures). Each is checked microseconds after it
// is recorded, so the bound is only reached by a flood of requests that
// fail in the one way that skips the check (see wireCodec).
const maxUndecoded = 1024

// wireCodec makes a request that is not valid protobuf wire format (random
// bytes, a string field that is not UTF-8, nesting too deep) fail with
// InvalidArgument, "request is not a valid nudge.v1.X: <proto error>".
// Without it grpc-go answers Internal for such a request whatever the
// handler does: the status is written the moment decoding fails.
//
// It returns three parts that only work together:
//
//   - the server option installs a codec (ForceServerCodecV2, used for
//     every content-subtype) that wraps grpc's proto codec. When unmarshal
//     fails it resets the message, records the error against the message's
//     pointer and reports success, so grpc hands the empty message on;
//   - the unary interceptor answers InvalidArgument for a request that has
//     a recorded error, instead of calling the handler;
//   - the stream interceptor wraps ServerStream.RecvMsg the same way, so the
//     handler's Recv returns the InvalidArgument error.
//
// Order: both interceptors must be outside (earlier in their chain than)
// every interceptor that reads requests, which would otherwise see the
// reset, empty message where the client sent garbage; for a stream that is
// any interceptor whose ServerStream wrapper looks at received messages.
// Interceptors that do not read requests, panic recovery and the logging of
// call results, may be outside them: put them after recovery and logging,
// so that the log shows the InvalidArgument.
//
// Leak contract. Every recorded error is removed by the interceptor that
// checks the message, whether or not RecvMsg failed afterwards. One path
// records an error that no interceptor checks: a unary request whose message
// did not decode and whose call then failed before the handler (the client
// sent a second message, or reset the stream before half-closing it), since
// grpc calls the unary interceptor only once it has read the end of the
// request. So does every failed decode if the option is installed without
// the interceptors. The table is therefore a ring of maxUndecoded entries:
// a new failure evicts the entry recorded maxUndecoded failures earlier if
// it is still there, so the table never holds more than maxUndecoded (empty)
// messages. A request evicted while its call is still in flight reaches its
// handler as the empty request: InvalidArgument from validation for every
// nudge request with required fields, the answer to an empty request for
// the others (GetRules, health).
func wireCodec() (grpc.ServerOption, grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return wireCodecOn(newDecodeFailures(maxUndecoded))
}

// wireCodecOn is wireCodec on the given table.
func wireCodecOn(failures *decodeFailures) (grpc.ServerOption, grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	c := &lenientCodec{base: encoding.GetCodecV2(grpcproto.Name), failures: failures}
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := c.failures.take(req); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &checkedStream{ServerStream: ss, failures: c.failures})
	}
	return grpc.ForceServerCodecV2(c), unary, stream
}

// lenientCodec is grpc's proto codec, except that a message that does not
// unmarshal is recorded in failures instead of failing the call.
type lenientCodec struct {
	base     encoding.CodecV2
	failures *decodeFailures
}

func (c *lenientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c *lenientCodec) Name() string { return c.base.Name() }

func (c *lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err // not a request nudge can answer for: grpc's Internal is right
	}
	proto.Reset(m) // no half-decoded request ever reaches a handler
	c.failures.record(m, notAMessage(m.ProtoReflect().Descriptor().FullName(), err))
	return nil
}

// checkedStream answers a recorded decode failure from RecvMsg.
type checkedStream struct {
	grpc.ServerStream
	failures *decodeFailures
}

func (s *checkedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	// Take the entry even when RecvMsg failed (a second message to a
	// server-streaming call): nothing else would.
	if derr := s.failures.take(m); derr != nil && err == nil {
		return derr
	}
	return err
}

// decodeFailures maps a message that did not decode to its InvalidArgument
// error, between the codec (record) and an interceptor (take). It is safe
// for concurrent use. A message is only ever decoded and checked by one
// goroutine, the one in RecvMsg, so an entry is never looked up before it
// is recorded.
type decodeFailures struct {
	live atomic.Int64 // len(byMsg), read without the lock on the hot path

	mu    sync.Mutex
	byMsg map[proto.Message]decodeFailure
	// ring holds the messages of byMsg by the order they were recorded in:
	// record writes slot next%len(ring), evicting its message if it still
	// has an entry. A taken entry clears its slot, so ring pins nothing.
	ring []proto.Message
	next int
}

type decodeFailure struct {
	err  error
	slot int
}

func newDecodeFailures(capacity int) *decodeFailures {
	return &decodeFailures{byMsg: make(map[proto.Message]decodeFailure), ring: make([]proto.Message, capacity)}
}

func (d *decodeFailures) record(m proto.Message, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if f, ok := d.byMsg[m]; ok { // decoded again before it was checked
		d.byMsg[m] = decodeFailure{err: err, slot: f.slot}
		return
	}
	slot := d.next % len(d.ring)
	d.next++
	if old := d.ring[slot]; old != nil {
		delete(d.byMsg, old)
		d.live.Add(-1)
	}
	d.ring[slot] = m
	d.byMsg[m] = decodeFailure{err: err, slot: slot}
	d.live.Add(1)
}

// take removes m's entry and returns its error, or nil if m decoded.
func (d *decodeFailures) take(v any) error {
	if d.live.Load() == 0 {
		return nil // the common case: no lock for a request that decoded
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f, ok := d.byMsg[m]
	if !ok {
		return nil
	}
	delete(d.byMsg, m)
	d.ring[f.slot] = nil
	d.live.Add(-1)
	return f.err
}
