package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Publish applies one batch.
func (s *Server) Publish(ctx context.Context, req *nudgev1.PublishRequest) (*nudgev1.PublishResponse, error) {
	start := time.Now()
	rejected, err := s.validateBatch(req)
	if err != nil {
		return nil, err
	}
	w := s.weight(len(req.GetEvents()))
	if err := s.admit.Acquire(ctx, w); err != nil {
		return nil, toStatus(err)
	}
	results, actions, err := s.applyBatch(ctx, req.GetEvents(), rejected)
	s.admit.Release(w)
	if err != nil {
		return nil, toStatus(err)
	}
	s.metrics.observeAckLatency(ctx, time.Since(start))
	return &nudgev1.PublishResponse{Results: results, Actions: actions}, nil
}

// Stream reads batches and answers each once it is committed. Up to
// MaxInFlight batches of a stream are processed at once; responses go out
// as batches finish, so they may be out of order. A failed batch (the store
// is unavailable, conflicts exhausted) ends the stream with its status after
// the other in-flight batches are answered: the producer re-sends what has
// no response.
func (s *Server) Stream(stream grpc.BidiStreamingServer[nudgev1.StreamRequest, nudgev1.StreamResponse]) error {
	ctx := stream.Context()
	reqs := make(chan *nudgev1.StreamRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	type batchDone struct {
		resp  *nudgev1.StreamResponse
		start time.Time // when the batch was received
		err   error
	}
	// Buffered for every batch that can be in flight, so a worker never
	// blocks (or leaks) when the handler has already returned.
	done := make(chan batchDone, s.cfg.MaxInFlight)
	inFlight := 0
	var stop error // set once the stream stops taking batches
	stopped := false
	draining := s.draining
	// An ingest stream with no batch for StreamIdle, and none in work,
	// ends: an idle producer does not hold a stream (and its goroutines)
	// for ever.
	idle := time.NewTimer(s.cfg.StreamIdle)
	defer idle.Stop()
	for {
		// Draining wins over a batch that is waiting at the same time.
		select {
		case <-draining:
			draining = nil
			if !stopped {
				stop, stopped = errIngestDraining, true
			}
		default:
		}
		if stopped && inFlight == 0 {
			return stop
		}
		in := reqs
		if stopped || inFlight >= s.cfg.MaxInFlight {
			in = nil
		}
		var idleC <-chan time.Time
		if !stopped && inFlight == 0 {
			idleC = idle.C
		}
		select {
		case <-idleC:
			stop, stopped = streamIdle(s.cfg.StreamIdle), true
		case req := <-in:
			idle.Reset(s.cfg.StreamIdle)
			start := time.Now()
			rejected, err := s.validateBatch(req)
			if err != nil {
				stop, stopped = err, true
				continue
			}
			// Room among the events in work on the whole server; the
			// stream is not read meanwhile (see Config.MaxInFlightEvents).
			w := s.weight(len(req.GetEvents()))
			if err := s.admit.Acquire(ctx, w); err != nil {
				return toStatus(err)
			}
			inFlight++
			go func() {
				defer s.admit.Release(w)
				// The recovery interceptor does not reach this goroutine.
				defer func() {
					if p := recover(); p != nil {
						s.cfg.Logger.ErrorContext(ctx, "panic in ingest batch", "panic", s.redactUsers(fmt.Sprint(p)), "stack", string(debug.Stack()))
						done <- batchDone{err: errPanicked}
					}
				}()
				results, actions, err := s.applyBatch(ctx, req.GetEvents(), rejected)
				if err != nil {
					done <- batchDone{err: err}
					return
				}
				done <- batchDone{resp: &nudgev1.StreamResponse{Seq: req.GetSeq(), Results: results, Actions: actions}, start: start}
			}()
		case d := <-done:
			idle.Reset(s.cfg.StreamIdle)
			inFlight--
			if d.err != nil {
				if !stopped {
					stop, stopped = toStatus(d.err), true
				}
				continue
			}
			if err := stream.Send(d.resp); err != nil {
				return err
			}
			s.metrics.observeAckLatency(ctx, time.Since(d.start))
		case err := <-recvErr:
			if !stopped {
				stopped = true
				if !errors.Is(err, io.EOF) {
					stop = err
				}
			}
		case <-draining:
			draining = nil
			if !stopped {
				stop, stopped = errIngestDraining, true
			}
		}
	}
}

// weight is what a batch of n events takes of Config.MaxInFlightEvents:
// n, at least 1 and at most the whole.
func (s *Server) weight(n int) int64 {
	return int64(min(max(n, 1), s.cfg.MaxInFlightEvents))
}

// validateBatch validates a batch request. Violations inside one event
// (field path events[i]...) reject that event only and are returned by
// index; any other violation fails the request with InvalidArgument.
func (s *Server) validateBatch(req proto.Message) (map[int]string, error) {
	rejected := invalidEventTimes(req)
	err := s.validator.Validate(req)
	if err == nil {
		return rejected, nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		return nil, validatorFailed(err)
	}
	if rejected == nil {
		rejected = make(map[int]string)
	}
	var whole []string
	for _, v := range verr.Violations {
		elems := v.Proto.GetField().GetElements()
		if len(elems) > 1 && elems[0].GetFieldName() == "events" {
			if i, ok := elems[0].GetSubscript().(*validate.FieldPathElement_Index); ok {
				idx := int(i.Index)
				if msg := describeViolation(v, elems[1:]); rejected[idx] == "" {
					rejected[idx] = msg
				} else {
					rejected[idx] += "; " + msg
				}
				continue
			}
		}
		whole = append(whole, describeViolation(v, elems))
	}
	if len(whole) > 0 {
		return nil, invalidRequest(strings.Join(whole, "; "))
	}
	return rejected, nil
}

// invalidEventTimes rejects, by index, the events of a batch whose
// occurred_at is not a valid google.protobuf.Timestamp (nanos outside
// [0, 1e9), or outside years 1 to 9999): protovalidate does not check it,
// and AsTime would quietly turn it into some other time.
func invalidEventTimes(req proto.Message) map[int]string {
	b, ok := req.(interface{ GetEvents() []*nudgev1.Event })
	if !ok {
		return nil
	}
	var bad map[int]string
	for i, e := range b.GetEvents() {
		if ts := e.GetOccurredAt(); ts != nil {
			if err := ts.CheckValid(); err != nil {
				if bad == nil {
					bad = make(map[int]string)
				}
				bad[i] = "occurred_at: not a valid timestamp (" + err.Error() + ") [timestamp.valid]"
			}
		}
	}
	return bad
}

// describeViolation formats a violation as "field.path: message [rule]",
// with the path given (relative to the event for per-event violations).
func describeViolation(v *protovalidate.Violation, path []*validate.FieldPathElement) string {
	msg := v.Proto.GetMessage()
	if msg == "" {
		msg = "invalid"
	}
	if p := protovalidate.FieldPathString(&validate.FieldPath{Elements: path}); p != "" {
		msg = p + ": " + msg
	}
	if rule := v.Proto.GetRuleId(); rule != "" {
		msg += " [" + rule + "]"
	}
	return msg
}

// applyBatch applies a batch's valid events and returns one result per event
// in request order, and the triggered actions. The events of a user whose
// stored profile cannot be read (profile.ErrCorrupt) are rejected, each
// with the reason, and the rest of the batch goes on: re-sending them would
// not help. Any other failure of a user's transaction (the store
// unavailable, conflicts exhausted, a panic) fails the batch as a whole:
// the producer re-sends it, and the users that did commit answer
// DUPLICATE.
func (s *Server) applyBatch(ctx context.Context, events []*nudgev1.Event, rejected map[int]string) ([]*nudgev1.EventResult, []*nudgev1.Action, error) {
	results := make([]*nudgev1.EventResult, len(events))
	valid := make([]profile.Event, 0, len(events))
	validIdx := make([]int, 0, len(events))
	for i, e := range events {
		results[i] = &nudgev1.EventResult{EventId: e.GetEventId()}
		if reason, bad := rejected[i]; bad {
			results[i].Status = nudgev1.EventStatus_EVENT_STATUS_REJECTED
			results[i].Reason = reason
			continue
		}
		valid = append(valid, EventFromProto(e))
		validIdx = append(validIdx, i)
	}
	counts := map[statusReason]int{{profile.Rejected, rejectInvalid}: len(rejected)}
	defer func() {
		for sr, n := range counts {
			s.metrics.countEvents(ctx, sr, n)
		}
	}()
	if len(valid) == 0 {
		return results, nil, nil
	}
	out := s.ingest.Apply(ctx, valid, s.step())
	now := s.cfg.Now()
	var failed error // the first failure that fails the batch
	for k, o := range out.Events {
		res := results[validIdx[k]]
		switch {
		case o.Err == nil:
			res.Status = statusToProto(o.Status)
			res.Reason = o.Reason
			if o.Status != profile.Rejected {
				res.ProfileVersion = o.Version
			}
			if o.Status == profile.Applied {
				s.metrics.observeLag(ctx, now.Sub(valid[k].OccurredAt))
			}
			counts[statusReason{o.Status, o.Code}]++
		case errors.Is(o.Err, profile.ErrCorrupt):
			res.Status = nudgev1.EventStatus_EVENT_STATUS_REJECTED
			res.Reason = "not applied: the stored profile cannot be read (" + o.Err.Error() +
				"); an operator must repair or delete it (ProfileService.DeleteProfile)"
			counts[statusReason{profile.Rejected, rejectCorrupt}]++
		case failed == nil:
			failed = o.Err
		}
	}
	if failed != nil {
		if perr, ok := errors.AsType[*profile.PanicError](failed); ok {
			s.cfg.Logger.ErrorContext(ctx, "panic in rules step", "panic", s.redactUsers(fmt.Sprint(perr.Value)), "stack", string(perr.Stack))
		}
		return nil, nil, failed
	}
	actions := actionsToProto(out.Actions)
	s.metrics.actions.Add(ctx, int64(len(actions)))
	s.countNotes(ctx, out.Notes, s.cfg.Now())
	return results, actions, nil
}

// step is the rules in force as a profile.Step (it stamps every action with
// the rules' version).
func (s *Server) step() profile.Step {
	return s.rules.Rules().Step(s.cfg.Limits, decision.OnEvalError(s.triggerError))
}

// triggerError records a trigger that could not be evaluated. The trigger
// did not fire; the event was applied.
func (s *Server) triggerError(e *decision.EvalError) {
	s.metrics.triggerErrs.Add(context.Background(), 1)
	s.cfg.Logger.Debug("trigger evaluation failed", "rule", e.Rule, "field", e.Field, "err", e.Err)
}
