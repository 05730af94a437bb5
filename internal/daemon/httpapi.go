package daemon

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"connectrpc.com/vanguard/vanguardgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// The HTTP listener's bounds beside those of the gRPC server it calls.
const (
	httpReadHeaderTimeout = 10 * time.Second
	httpIdleTimeout       = 2 * time.Minute
	// httpJSONFactor: a request's JSON may be this many times the gRPC
	// port's largest message before it is refused unread. JSON spells
	// field names and numbers out; the transcoded protobuf message is then
	// held to the gRPC limit itself.
	httpJSONFactor = 4
)

// newHTTPHandler serves, on one handler, every RPC registered on g with the
// Connect protocol (JSON or protobuf bodies) and gRPC-Web, plus GET
// /healthz (200 while the process serves) and GET /readyz (200 while the
// store is reachable, else 503).
//
// There is no second implementation of any service: vanguard transcodes
// each call into a gRPC call that g serves in this process (its
// ServeHTTP), through the same interceptors as the gRPC port (bearer
// tokens from the Authorization header, roles, rate limits, validation,
// panic recovery, the call log), the same handlers and the same rpc.server
// metrics and spans. The gRPC port does not change at all. Errors come
// back as Connect errors ({"code": "invalid_argument", "message": ...})
// with the HTTP status of their code: 400, 401, 403, 404, 409, 429, 503,
// and so on.
//
// JSON bodies are protojson: field names as in the .proto (user_id) or in
// lowerCamelCase (userId); answers in lowerCamelCase with every field
// written, zero values included. Unlike vanguard's default, a field the
// message does not have is an error (invalid_argument naming it), not
// silently dropped: a misspelled field in a curl command must not pass for
// an absent one.
//
// With tokens, admit checks a call's token and role from its headers
// before its body is read (server.Server.Admit), as the gRPC port does, so
// that a caller without a token cannot make the server read megabytes.
func newHTTPHandler(g *grpc.Server, admit admitFunc, readyz http.HandlerFunc, maxMessageBytes int) (http.Handler, error) {
	maxBody := uint32(min(int64(maxMessageBytes)*httpJSONFactor, 1<<31))
	methods := methodsOf(g)
	t, err := vanguardgrpc.NewTranscoder(g,
		vanguard.WithCodec(func(res vanguard.TypeResolver) vanguard.Codec {
			return strictJSON{&vanguard.JSONCodec{
				MarshalOptions:   protojson.MarshalOptions{Resolver: res, EmitUnpopulated: true},
				UnmarshalOptions: protojson.UnmarshalOptions{Resolver: res},
			}}
		}),
		vanguard.WithDefaultServiceOptions(vanguard.WithMaxMessageBufferBytes(maxBody)),
		vanguard.WithUnknownHandler(unknownRoute(methods)),
	)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", readyz)
	mux.Handle("/", admitFirst(admit, methods, connectByDefault(t)))
	return mux, nil
}

// admitFunc checks a call's token for a method from its headers alone: nil
// or a gRPC status error (server.Server.Admit).
type admitFunc func(ctx context.Context, fullMethod string, authorization []string) error

// admitFirst refuses, before reading its body, a call of one of methods
// that admit refuses, with the error in the call's protocol (a Connect
// JSON error, or gRPC-Web trailers) and its HTTP status (401, 403).
func admitFirst(admit admitFunc, methods map[string]bool, next http.Handler) http.Handler {
	errs := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if methods[r.URL.Path] {
			if err := admit(r.Context(), r.URL.Path, r.Header.Values("Authorization")); err != nil {
				st := status.Convert(err)
				_ = errs.Write(w, r, connect.NewError(connect.Code(st.Code()), errors.New(st.Message())))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// methodsOf is the set of g's methods as HTTP paths: /package.Service/Method.
func methodsOf(g *grpc.Server) map[string]bool {
	methods := map[string]bool{}
	for svc, info := range g.GetServiceInfo() {
		for _, m := range info.Methods {
			methods["/"+svc+"/"+m.Name] = true
		}
	}
	return methods
}

// unknownRoute answers what vanguard cannot route, in the Connect error
// format: 415 for one of methods called with a Content-Type that is not the
// API's, 404 otherwise.
func unknownRoute(methods map[string]bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, status, msg := "not_found", http.StatusNotFound,
			fmt.Sprintf("no method at %s %s: call POST /<package>.<Service>/<Method>, e.g. POST /nudge.v1.DecisionService/GetDecision, with Content-Type: application/json", r.Method, r.URL.Path)
		if methods[r.URL.Path] {
			code, status, msg = "unimplemented", http.StatusUnsupportedMediaType,
				fmt.Sprintf("%s %s with Content-Type %q: send POST with Content-Type application/json (or application/proto, or gRPC-Web)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(map[string]string{"code": code, "message": msg})
	})
}

// strictJSON is vanguard's JSON codec whose decode errors are the
// caller's: invalid_argument (HTTP 400) naming the message and the
// problem, as the gRPC port answers a request that is not valid protobuf,
// where vanguard would answer unknown (HTTP 500).
type strictJSON struct{ *vanguard.JSONCodec }

func (c strictJSON) Unmarshal(data []byte, msg proto.Message) error {
	if err := c.JSONCodec.Unmarshal(data, msg); err != nil {
		return connect.NewError(connect.CodeInvalidArgument,
			fmt.Errorf("request is not a valid %s: %w", msg.ProtoReflect().Descriptor().FullName(), err))
	}
	return nil
}

// connectByDefault marks a POST with a JSON or protobuf body as a Connect
// unary call when it does not say which protocol it speaks: the
// Connect-Protocol-Version header is optional for Connect servers, and a
// curl command does not send it. (Without the header vanguard takes such a
// request for REST, which nudge's API does not map, and answers 404.)
func connectByDefault(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.Header.Get("Connect-Protocol-Version") == "" {
			mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if mt == "application/json" || mt == "application/proto" {
				r.Header.Set("Connect-Protocol-Version", "1")
			}
		}
		next.ServeHTTP(w, r)
	})
}

// newHTTPServer is the HTTP listener's server: HTTP/1.1 and HTTP/2 (h2c
// without TLS, so gRPC-Web and Connect clients may use either), with the
// gRPC port's TLS configuration and its bound on streams per connection.
func newHTTPServer(h http.Handler, tlsConf *tls.Config, maxStreams int, log *slog.Logger) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(tlsConf == nil)
	s := &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		Protocols:         &protocols,
		ReadHeaderTimeout: httpReadHeaderTimeout,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if maxStreams > 0 {
		s.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: maxStreams}
	}
	return s
}

// serveHTTP serves s on lis until ctx ends, then shuts it down: it stops
// accepting and waits for the calls in flight, at most drain, before it
// closes the connections left.
func serveHTTP(ctx context.Context, s *http.Server, lis net.Listener, drain time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		if s.TLSConfig != nil {
			errc <- s.ServeTLS(lis, "", "")
			return
		}
		errc <- s.Serve(lis)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
	defer cancel()
	err := s.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("http: %w", serr)
	}
	return err
}
