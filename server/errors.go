package server

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
)

// This file is the server's only source of gRPC statuses: toStatus maps
// domain errors to codes, and the functions below build the statuses of
// the edges (validation, auth, limits, draining). A handler returns what
// these give it; nothing else in the package calls status.Error.

// toStatus maps a domain error to a gRPC status.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	msg := err.Error()
	switch {
	case errors.Is(err, profile.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, profile.ErrConflict):
		code = codes.Aborted
	case errors.Is(err, profile.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, profile.ErrCorrupt):
		code = codes.DataLoss
	case errors.Is(err, delivery.ErrGroupNotFound):
		code = codes.NotFound
	case errors.Is(err, delivery.ErrBadAckID):
		code, msg = codes.InvalidArgument, msg+" (ack ids come from SubscribeResponse.ack_id)"
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	default:
		code = codes.Internal
	}
	return status.Error(code, msg)
}

// unavailable is the status of a call that failed doing what, because of
// a dependency (the outbox, the audit stream) that may work on a retry.
func unavailable(what string, err error) error {
	return status.Errorf(codes.Unavailable, "%s: %v", what, err)
}

// Statuses of the edges.
var (
	errIngestDraining    = status.Error(codes.Unavailable, "server is shutting down: re-send unanswered batches to another instance")
	errSubscribeDraining = status.Error(codes.Unavailable, "server is shutting down: subscribe again; unacknowledged actions are redelivered")
	errPanicked          = status.Error(codes.Internal, "internal error (the server recovered from a panic; see its log)")
	errNoOutbox          = status.Error(codes.Unimplemented, "this server does not deliver actions (no outbox configured)")
	errNoMeasures        = status.Error(codes.Unimplemented, "this server keeps no campaign counters (no measurement store configured)")
	errNoDecisionLog     = status.Error(codes.Unimplemented, "this server reads no decision log (no audit log configured)")
	errNoDeadLetters     = status.Error(codes.Unimplemented, "this server lists no dead letters (no outbox configured)")
	errTailDraining      = status.Error(codes.Unavailable, "server is shutting down: tail again, from another instance")
	errExportDraining    = status.Error(codes.Unavailable, "server is shutting down: export again, from another instance")
	errNoScanner         = status.Error(codes.Unimplemented, "this server's store cannot list its profiles, so it exports no features")
	errNoFeatures        = status.Error(codes.FailedPrecondition, "the rules in force define no features: add a features section to the rules file")
	errNoToken           = status.Error(codes.Unauthenticated, "missing bearer token: send metadata 'authorization: Bearer <token>'")
	errUnknownToken      = status.Error(codes.Unauthenticated, "unknown token: send a token configured on this server")
)

// invalidArgument is the status of a request protovalidate refused.
func invalidArgument(err error) error {
	return invalidRequest(err.Error())
}

// invalidRequest is the status of a request that is invalid as a whole.
func invalidRequest(why string) error {
	return status.Error(codes.InvalidArgument, "invalid request: "+why)
}

// validatorFailed is the status of a request the validator could not
// judge (a bug, not the caller's fault).
func validatorFailed(err error) error {
	return status.Errorf(codes.Internal, "validate request: %v", err)
}

// notAMessage is the status of a request that does not decode as the
// method's message.
func notAMessage(name protoreflect.FullName, err error) error {
	return status.Errorf(codes.InvalidArgument, "request is not a valid %s: %v", name, err)
}

// noAccessRule and lacksRole refuse an authenticated token a method.
func noAccessRule(token, method string) error {
	return status.Errorf(codes.PermissionDenied, "token %q: no access rule covers %s, so it is denied", token, method)
}

func lacksRole(token string, role Role, method string) error {
	return status.Errorf(codes.PermissionDenied, "token %q lacks role %q, required by %s", token, role, method)
}

// lacksRoleFor is the status of a request asking what its token's roles
// do not allow.
func lacksRoleFor(token string, role Role, what string) error {
	return status.Errorf(codes.PermissionDenied, "token %q lacks role %q, required to %s", token, role, what)
}

// lacksRoles refuses a token a method that any one of roles opens.
// RoleConsole, admin's read-only stand-in, is named apart after the
// method, so that the message leads with the roles the method is for.
func lacksRoles(token string, roles []Role, method string) error {
	names := make([]string, 0, len(roles))
	console := ""
	for _, r := range roles {
		if r == RoleConsole {
			console = ` (the read-only role "console" may call it too)`
			continue
		}
		names = append(names, strconv.Quote(string(r)))
	}
	return status.Errorf(codes.PermissionDenied, "token %q lacks role %s, required by %s%s", token, strings.Join(names, " or "), method, console)
}

// streamIdle is the status that ends an ingest stream idle for d.
func streamIdle(d time.Duration) error {
	return status.Errorf(codes.Unavailable, "no batch on this stream for %v: it is closed; open a new stream to publish again", d)
}

// overBurst is the status of a batch larger than its token's burst.
func overBurst(token, unit string, n, burst int) error {
	return status.Errorf(codes.InvalidArgument,
		"a batch of %d %s is more than token %q's burst of %d (its rate × burst_seconds): send batches of at most %d",
		n, unit, token, burst, burst)
}

// groupDenied refuses a token a consumer group it does not name.
func groupDenied(token, group string) error {
	return status.Errorf(codes.PermissionDenied, "token %q may not use consumer group %q: add the group to the token's groups", token, group)
}

// overLimit is the status of a call past its token's rate, with the delay
// after which a retry finds room, also as a RetryInfo detail.
func overLimit(token, limit, unit string, wait time.Duration) error {
	st := status.Newf(codes.ResourceExhausted, "token %q is over its limit of %s %s per second: retry in %v", token, limit, unit, wait)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)}); err == nil {
		st = d
	}
	return st.Err()
}
