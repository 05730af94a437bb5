package server

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// FuzzStream feeds a sequence of arbitrary messages through the path an
// ingest stream's requests take, without a network: the wire codec (a
// message that does not decode becomes InvalidArgument, see wireCodec),
// the rate limiter's stream wrapper, and the Stream handler itself, with
// its flow control and workers. The input is a sequence of messages, each
// prefixed with its length as a protobuf varint (a malformed prefix ends
// the sequence; the rest is the last message).
//
// It checks that nothing panics or hangs, that the stream ends cleanly or
// with InvalidArgument, that a valid first batch is answered, that every
// response answers a batch that was sent (same seq, one result per event,
// each as checkBatch wants it) and that no batch is answered twice.
func FuzzStream(f *testing.F) {
	// Seeds: single and concatenated messages of FuzzIngestBatch's corpus,
	// and two valid batches in a row.
	var stream [][]byte
	dir := filepath.Join("testdata", "fuzz", "FuzzIngestBatch")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if b, ok := corpusBytes(filepath.Join(dir, e.Name())); ok {
			f.Add(frame(b))
			if strings.HasPrefix(e.Name(), "stream-") {
				stream = append(stream, b)
			}
		}
	}
	f.Add(frame(stream...))
	f.Add([]byte{0x05, 0x0a})

	store := &memStore{now: func() time.Time { return fuzzNow }}
	s := newFuzzServer(f, store)
	codec := &lenientCodec{base: encoding.GetCodecV2(grpcproto.Name), failures: newDecodeFailures(maxUndecoded)}
	// An unlimited token: the fuzzed path is the charge's, not the
	// limit's.
	p := &principal{name: "fuzz"}
	limits := s.cfg.Limits
	f.Fuzz(func(t *testing.T, data []byte) {
		store.reset()
		msgs := unframe(data, 8)
		// Canceled when the handler returns, as grpc does: the handler's
		// reading goroutine then ends.
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		fs := &fuzzStream{ctx: ctx, codec: codec, msgs: msgs}
		var ss grpc.ServerStream = &checkedStream{ServerStream: fs, failures: codec.failures}
		ss = &limitedStream{ServerStream: ss, s: s, p: p}
		err := s.Stream(&grpc.GenericServerStream[nudgev1.StreamRequest, nudgev1.StreamResponse]{ServerStream: ss})
		cancel()
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("stream ended with %v, want nil or InvalidArgument", err)
		}
		// A first batch that decodes and validates is answered: the
		// stream does not refuse what it should take.
		if len(msgs) > 0 {
			var first nudgev1.StreamRequest
			if proto.Unmarshal(msgs[0], &first) == nil {
				if _, verr := s.validateBatch(&first); verr == nil && len(fs.sent) == 0 {
					t.Fatalf("a valid first batch (seq %d, %d events) got no response; the stream ended with %v", first.GetSeq(), len(first.GetEvents()), err)
				}
			}
		}
		// The batches sent, by seq: a response must answer one, once,
		// as checkBatch checks an answer (one result per event, in
		// order, rejections with their reasons).
		sent := map[uint64][]*nudgev1.StreamRequest{}
		for _, m := range msgs {
			req := &nudgev1.StreamRequest{}
			if proto.Unmarshal(m, req) == nil {
				sent[req.GetSeq()] = append(sent[req.GetSeq()], req)
			}
		}
		for _, resp := range fs.sent {
			reqs := sent[resp.GetSeq()]
			i := slices.IndexFunc(reqs, func(r *nudgev1.StreamRequest) bool { return len(r.GetEvents()) == len(resp.GetResults()) })
			if i < 0 {
				t.Fatalf("response seq %d with %d results answers no batch sent (%d batches with that seq)", resp.GetSeq(), len(resp.GetResults()), len(reqs))
			}
			req := reqs[i]
			sent[resp.GetSeq()] = slices.Delete(reqs, i, i+1)
			checkBatch(t, s, limits, req, req.GetEvents(), resp.GetResults(), resp, nil)
		}
	})
}

// frame prefixes each message with its length.
func frame(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = protowire.AppendBytes(out, m)
	}
	return out
}

// unframe splits data into at most max length-prefixed messages; a prefix
// that does not parse makes the rest one message.
func unframe(data []byte, max int) [][]byte {
	var msgs [][]byte
	for len(data) > 0 && len(msgs) < max-1 {
		m, n := protowire.ConsumeBytes(data)
		if n < 0 {
			break
		}
		msgs, data = append(msgs, m), data[n:]
	}
	if len(data) > 0 {
		msgs = append(msgs, data)
	}
	return msgs
}

// corpusBytes reads a "go test fuzz v1" file of one []byte value.
func corpusBytes(path string) ([]byte, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	_, rest, ok := strings.Cut(string(data), "\n")
	if !ok {
		return nil, false
	}
	rest = strings.TrimSpace(rest)
	lit, ok := strings.CutPrefix(rest, "[]byte(")
	if !ok {
		return nil, false
	}
	s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	if err != nil {
		return nil, false
	}
	return []byte(s), true
}

// fuzzStream is the transport's side of an ingest stream: it hands out
// the messages, decoded by the server's codec, then io.EOF, and keeps what
// the handler sends.
type fuzzStream struct {
	ctx   context.Context
	codec *lenientCodec
	msgs  [][]byte
	sent  []*nudgev1.StreamResponse
}

func (s *fuzzStream) RecvMsg(m any) error {
	if len(s.msgs) == 0 {
		return io.EOF
	}
	b := s.msgs[0]
	s.msgs = s.msgs[1:]
	return s.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, m)
}

func (s *fuzzStream) SendMsg(m any) error {
	resp, ok := m.(*nudgev1.StreamResponse)
	if !ok {
		return errors.New("not a StreamResponse")
	}
	s.sent = append(s.sent, resp)
	return nil
}

func (s *fuzzStream) Context() context.Context     { return s.ctx }
func (s *fuzzStream) SetHeader(metadata.MD) error  { return nil }
func (s *fuzzStream) SendHeader(metadata.MD) error { return nil }
func (s *fuzzStream) SetTrailer(metadata.MD)       {}
