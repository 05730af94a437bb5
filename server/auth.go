package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Role is a permission a Token grants: the right to call one group of
// services.
type Role string

// The roles, and the services each one opens.
const (
	// RoleIngest calls nudge.v1.IngestService (Stream, Publish).
	RoleIngest Role = "ingest"
	// RoleDecide calls nudge.v1.DecisionService.
	RoleDecide Role = "decide"
	// RoleSubscribe calls nudge.v1.ActionService (Subscribe, Ack).
	RoleSubscribe Role = "subscribe"
	// RoleAdmin calls nudge.v1.ProfileService and nudge.v1.AdminService.
	RoleAdmin Role = "admin"
)

var knownRoles = []Role{RoleIngest, RoleDecide, RoleSubscribe, RoleAdmin}

// Token is a bearer token a caller sends as "authorization: Bearer
// <Secret>". With no tokens configured the server does not authenticate.
type Token struct {
	// Name identifies the token in logs and error messages (never the
	// secret). Required, unique.
	Name string
	// Secret is what the caller sends. Required, unique. The server keeps
	// only its SHA-256.
	Secret string
	// Roles are the services the token may call. A token without roles
	// may still use server reflection.
	Roles []Role
	// EventsPerSecond limits the events the token may ingest (Publish and
	// Stream, counted per event). Bursts of one maximum batch (5000) or of
	// one second's worth, whichever is larger, pass. Default 0: unlimited.
	EventsPerSecond float64
	// DecisionsPerSecond limits the decisions the token may ask for
	// (GetDecision counts 1, BatchGetDecisions one per query). Bursts of
	// one maximum batch (1000) or of one second's worth, whichever is
	// larger, pass. Default 0: unlimited.
	DecisionsPerSecond float64
	// Groups are the consumer groups the token may Subscribe to and Ack
	// for (with RoleSubscribe): group names, or prefixes ending in "*"
	// ("sms-*" is every group whose name starts with "sms-"; "*" alone is
	// every group). Default none: a subscribe token must name its groups,
	// since a member of a group can drop the group's actions (Ack, a
	// channel filter) and a new group name creates a group on every
	// outbox stream.
	Groups []string
}

// anyRole is the rule of methods open to every valid token.
const anyRole Role = ""

// serviceRoles is the access rule of every service behind authentication:
// the role its methods require. The health service is not here: it is
// skipped before authentication (see NewGRPCServer). A method of any other
// service is denied (fail closed), so a new service cannot be added without
// deciding who may call it.
var serviceRoles = map[string]Role{
	nudgev1.IngestService_ServiceDesc.ServiceName:   RoleIngest,
	nudgev1.DecisionService_ServiceDesc.ServiceName: RoleDecide,
	nudgev1.ActionService_ServiceDesc.ServiceName:   RoleSubscribe,
	nudgev1.ProfileService_ServiceDesc.ServiceName:  RoleAdmin,
	nudgev1.AdminService_ServiceDesc.ServiceName:    RoleAdmin,
	// Reflection describes the API, no data: any valid token may use it.
	reflectionv1.ServerReflection_ServiceDesc.ServiceName:      anyRole,
	reflectionv1alpha.ServerReflection_ServiceDesc.ServiceName: anyRole,
}

// requiredRole is the role fullMethod ("/package.Service/Method") requires;
// false when no rule covers it.
func requiredRole(fullMethod string) (Role, bool) {
	service, _, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok {
		return "", false
	}
	role, ok := serviceRoles[service]
	return role, ok
}

// principal is an authenticated caller: its token's name, roles and rate
// limiters (nil: unlimited).
type principal struct {
	name      string
	roles     []Role
	groups    []string // Token.Groups
	events    *rate.Limiter
	decisions *rate.Limiter
}

// allowsGroup says whether the token names the consumer group, itself or
// by a prefix ending in "*".
func (p *principal) allowsGroup(group string) bool {
	for _, g := range p.groups {
		if prefix, wildcard := strings.CutSuffix(g, groupWildcard); g == group || (wildcard && strings.HasPrefix(group, prefix)) {
			return true
		}
	}
	return false
}

type principalKey struct{}

func principalFrom(ctx context.Context) *principal {
	p, _ := ctx.Value(principalKey{}).(*principal)
	return p
}

// TokenName returns the name of the token the call authenticated with;
// false when the server does not authenticate (or ctx is not a call's).
func TokenName(ctx context.Context) (string, bool) {
	if p := principalFrom(ctx); p != nil {
		return p.name, true
	}
	return "", false
}

// ValidateTokens checks tokens as New does (see Config.Tokens), so that a
// configuration can be refused before anything starts. Errors name the
// token, never its secret.
func ValidateTokens(tokens []Token) error {
	_, err := compileTokens(tokens)
	return err
}

// secretDigest is how a secret is looked up: never by its plain text.
type secretDigest [sha256.Size]byte

// compileTokens validates the tokens and indexes them by the digest of
// their secret; nil when there are none (authentication off).
func compileTokens(tokens []Token) (map[secretDigest]*principal, error) {
	if len(tokens) == 0 {
		return nil, nil
	}
	byDigest := make(map[secretDigest]*principal, len(tokens))
	names := make(map[string]bool, len(tokens))
	for i, t := range tokens {
		if t.Name == "" {
			return nil, fmt.Errorf("server: token %d: empty name", i)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("server: token %q: duplicate name", t.Name)
		}
		names[t.Name] = true
		if t.Secret == "" {
			return nil, fmt.Errorf("server: token %q: empty secret", t.Name)
		}
		d := secretDigest(sha256.Sum256([]byte(t.Secret)))
		if other, dup := byDigest[d]; dup {
			return nil, fmt.Errorf("server: token %q: same secret as token %q", t.Name, other.name)
		}
		for _, r := range t.Roles {
			if !slices.Contains(knownRoles, r) {
				return nil, fmt.Errorf("server: token %q: unknown role %q (known: %s, %s, %s, %s)",
					t.Name, r, RoleIngest, RoleDecide, RoleSubscribe, RoleAdmin)
			}
		}
		for _, g := range t.Groups {
			if err := checkTokenGroup(g); err != nil {
				return nil, fmt.Errorf("server: token %q: %w", t.Name, err)
			}
		}
		p := &principal{name: t.Name, roles: slices.Clone(t.Roles), groups: slices.Clone(t.Groups)}
		var err error
		if p.events, err = newLimiter(t.Name, "EventsPerSecond", t.EventsPerSecond, maxEventsPerBatch); err != nil {
			return nil, err
		}
		if p.decisions, err = newLimiter(t.Name, "DecisionsPerSecond", t.DecisionsPerSecond, maxQueriesPerBatch); err != nil {
			return nil, err
		}
		byDigest[d] = p
	}
	return byDigest, nil
}

// newLimiter returns the limiter of perSecond units, nil for 0
// (unlimited). Its burst is one second's worth, and at least maxBatch so
// that the largest batch the API accepts can always pass.
func newLimiter(token, field string, perSecond float64, maxBatch int) (*rate.Limiter, error) {
	switch {
	case perSecond == 0:
		return nil, nil
	case !(perSecond > 0) || math.IsInf(perSecond, 0):
		return nil, fmt.Errorf("server: token %q: %s is %v; want a finite number ≥ 0 (0: unlimited)", token, field, perSecond)
	}
	burst := max(int(math.Min(math.Ceil(perSecond), math.MaxInt32)), maxBatch)
	return rate.NewLimiter(rate.Limit(perSecond), burst), nil
}

// authenticate is the auth.AuthFunc: it finds the caller's token, checks it
// has the role the method requires, and puts the principal in the context.
// Messages name the token, never the secret.
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	secret, err := auth.AuthFromMD(ctx, "bearer")
	if err != nil || secret == "" {
		return nil, errNoToken
	}
	// A map lookup compares digests, not secrets: its timing tells at
	// most how a guess's digest relates to a real one, which says
	// nothing about the real secret.
	p := s.tokens[secretDigest(sha256.Sum256([]byte(secret)))]
	if p == nil {
		return nil, errUnknownToken
	}
	if ci := callInfoFrom(ctx); ci != nil {
		ci.token = p.name // for the call's log line, which is written outside
	}
	method, _ := grpc.Method(ctx)
	role, ok := requiredRole(method)
	switch {
	case !ok:
		return nil, noAccessRule(p.name, method)
	case role != anyRole && !slices.Contains(p.roles, role):
		return nil, lacksRole(p.name, role, method)
	}
	return context.WithValue(ctx, principalKey{}, p), nil
}
