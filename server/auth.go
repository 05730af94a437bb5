package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"slices"
	"strings"

	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
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
	// RoleAdmin calls nudge.v1.ProfileService and nudge.v1.AdminService,
	// and may ask for explain traces.
	RoleAdmin Role = "admin"
	// RoleConsole reads what RoleAdmin reads and changes nothing: the web
	// console's read-only role. It calls the methods of AdminService and
	// ProfileService that write nothing (methodRoles), TestRules among
	// them, and not DeleteProfile or DeleteGroup.
	RoleConsole Role = "console"
	// RoleSend is a sender's: with RoleDecide, it may ask GetDecision to
	// reserve a frequency-cap slot (GetDecisionRequest.reserve), which
	// changes the user's state. A decide token alone stays read-only.
	RoleSend Role = "send"
	// RoleExplain may ask for a decision's explain trace, which shows the
	// user's consent, time zone, local time, purchase state and send
	// counts. RoleAdmin may too. It does not open the decision log
	// (AdminService.TailDecisions): that lists every user's decisions,
	// not the ones the token asks for, so it stays RoleAdmin's (and
	// RoleConsole's).
	RoleExplain Role = "explain"
	// RoleFeatures calls ProfileService.GetFeatures and ExportFeatures,
	// read-only: the features the rules define, for models (a scoring
	// service, a training job). RoleAdmin and RoleConsole may too. It
	// opens no other method of ProfileService: GetProfile shows the whole
	// profile and DeleteProfile erases it, so they stay RoleAdmin's (and
	// GetProfile RoleConsole's).
	RoleFeatures Role = "features"
)

var knownRoles = []Role{RoleIngest, RoleDecide, RoleSubscribe, RoleAdmin, RoleSend, RoleExplain, RoleFeatures, RoleConsole}

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
	// Stream, counted per event). Default 0: unlimited.
	EventsPerSecond float64
	// DecisionsPerSecond limits the decisions the token may ask for
	// (GetDecision counts 1, BatchGetDecisions one per query). Default 0:
	// unlimited.
	DecisionsPerSecond float64
	// BurstSeconds is how many seconds of its rate a limited token may
	// use at once: the burst is the rate × BurstSeconds, rounded up (at
	// least 1). A batch larger than the burst can never pass and is
	// refused with InvalidArgument saying so. Default 1.
	BurstSeconds float64
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

// methodRoles are the methods whose access rule is not their service's:
// any one of the roles opens the method. They come before serviceRoles.
// A refusal names RoleConsole after the others (lacksRoles): the method
// is for them, console only reads along.
var methodRoles = map[string][]Role{
	nudgev1.ProfileService_GetFeatures_FullMethodName:    {RoleFeatures, RoleAdmin, RoleConsole},
	nudgev1.ProfileService_ExportFeatures_FullMethodName: {RoleFeatures, RoleAdmin, RoleConsole},
	nudgev1.ProfileService_GetProfile_FullMethodName:     {RoleAdmin, RoleConsole},
	// AdminService but DeleteGroup. TailDecisions lists every user's
	// decisions, which the console shows its operators like admin's
	// tools do.
	nudgev1.AdminService_GetRules_FullMethodName:            {RoleAdmin, RoleConsole},
	nudgev1.AdminService_ListGroups_FullMethodName:          {RoleAdmin, RoleConsole},
	nudgev1.AdminService_GetCampaignReport_FullMethodName:   {RoleAdmin, RoleConsole},
	nudgev1.AdminService_ListCampaignReports_FullMethodName: {RoleAdmin, RoleConsole},
	nudgev1.AdminService_TailDecisions_FullMethodName:       {RoleAdmin, RoleConsole},
	nudgev1.AdminService_ListDeadActions_FullMethodName:     {RoleAdmin, RoleConsole},
	nudgev1.AdminService_TestRules_FullMethodName:           {RoleAdmin, RoleConsole},
}

// requiredRole is the role fullMethod ("/package.Service/Method") requires
// by its service's rule; false when no rule covers it. See methodRoles
// first.
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
	name string
	// recv is the token's share of the receive bound (admission.go): half
	// of Config.MaxRecvBytesInFlight.
	recv      *semaphore.Weighted
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
				return nil, fmt.Errorf("server: token %q: unknown role %q (known: %s)", t.Name, r, roleList())
			}
		}
		for _, g := range t.Groups {
			if err := checkTokenGroup(g); err != nil {
				return nil, fmt.Errorf("server: token %q: %w", t.Name, err)
			}
		}
		p := &principal{name: t.Name, roles: slices.Clone(t.Roles), groups: slices.Clone(t.Groups)}
		var err error
		burst := t.BurstSeconds
		switch {
		case burst == 0:
			burst = 1
		case !(burst > 0) || math.IsInf(burst, 0):
			return nil, fmt.Errorf("server: token %q: BurstSeconds is %v; want a finite number > 0 (default 1)", t.Name, burst)
		}
		if p.events, err = newLimiter(t.Name, "EventsPerSecond", t.EventsPerSecond, burst); err != nil {
			return nil, err
		}
		if p.decisions, err = newLimiter(t.Name, "DecisionsPerSecond", t.DecisionsPerSecond, burst); err != nil {
			return nil, err
		}
		byDigest[d] = p
	}
	return byDigest, nil
}

// newLimiter returns the limiter of perSecond units, nil for 0
// (unlimited), with a burst of burstSeconds of its rate (at least 1).
// The burst is what the token may use at once, also in one batch: it is
// not raised to the largest batch the API accepts, which would let a
// token limited to 2 decisions/s take 1,000 in one call.
func newLimiter(token, field string, perSecond, burstSeconds float64) (*rate.Limiter, error) {
	switch {
	case perSecond == 0:
		return nil, nil
	case !(perSecond > 0) || math.IsInf(perSecond, 0):
		return nil, fmt.Errorf("server: token %q: %s is %v; want a finite number ≥ 0 (0: unlimited)", token, field, perSecond)
	}
	burst := max(int(math.Min(math.Ceil(perSecond*burstSeconds-1e-9), math.MaxInt32)), 1)
	return rate.NewLimiter(rate.Limit(perSecond), burst), nil
}

// roleList is the known roles, for messages.
func roleList() string { return strings.Join(roleNames(knownRoles), ", ") }

func roleNames(roles []Role) []string {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	return names
}

// has reports whether the principal holds role.
func (p *principal) has(role Role) bool { return slices.Contains(p.roles, role) }

// authorize finds the token whose secret the authorization header
// (values of "authorization") carries and checks it has the role method
// requires. Messages name the token, never the secret.
func (s *Server) authorize(authorization []string, method string) (*principal, error) {
	secret, ok := bearer(authorization)
	if !ok {
		return nil, errNoToken
	}
	p := s.principalOf(secret)
	if p == nil {
		return nil, errUnknownToken
	}
	if roles, ok := methodRoles[method]; ok {
		if !slices.ContainsFunc(roles, p.has) {
			return p, lacksRoles(p.name, roles, method)
		}
		return p, nil
	}
	role, ok := requiredRole(method)
	switch {
	case !ok:
		return p, noAccessRule(p.name, method)
	case role != anyRole && !p.has(role):
		return p, lacksRole(p.name, role, method)
	}
	return p, nil
}

// principalOf is the token whose secret is secret; nil when none has it
// or the server does not authenticate. A map lookup compares digests, not
// secrets: its timing tells at most how a guess's digest relates to a
// real one, which says nothing about the real secret.
func (s *Server) principalOf(secret string) *principal {
	return s.tokens[secretDigest(sha256.Sum256([]byte(secret)))]
}

// bearer is the token of a single "Bearer <token>" authorization value
// (the scheme in any case, as auth.AuthFromMD reads it).
func bearer(values []string) (string, bool) {
	if len(values) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		return "", false
	}
	return token, true
}

// mayDecide checks what a decision request asks beyond a plain, read-only
// decision: reserve needs RoleSend, explain RoleExplain or RoleAdmin.
// Without authentication everything is allowed.
func mayDecide(ctx context.Context, reserve, explain bool) error {
	p := principalFrom(ctx)
	switch {
	case p == nil:
		return nil
	case reserve && !p.has(RoleSend):
		return lacksRoleFor(p.name, RoleSend, "reserve a frequency-cap slot (reserve: true)")
	case explain && !p.has(RoleExplain) && !p.has(RoleAdmin):
		return lacksRoleFor(p.name, RoleExplain, "ask for an explain trace (explain: true); admin may too")
	}
	return nil
}
