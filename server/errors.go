package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/profile"
)

// toStatus maps a domain error to a gRPC status. It is the only place that
// does: handlers return what this gives them.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	switch {
	case errors.Is(err, profile.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, profile.ErrConflict):
		code = codes.Aborted
	case errors.Is(err, profile.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, profile.ErrCorrupt):
		code = codes.DataLoss
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	default:
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}
