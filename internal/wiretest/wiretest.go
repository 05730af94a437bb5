// Package wiretest helps tests put arbitrary bytes on the wire of a gRPC
// call. It is for tests only.
package wiretest

import "google.golang.org/grpc/mem"

// RawCodec sends and receives *[]byte as they are, under the proto
// content-subtype: a client that sends whatever bytes it likes, e.g. with
// grpc.ForceCodecV2(wiretest.RawCodec{}).
type RawCodec struct{}

// Marshal returns the bytes v (a *[]byte) points to.
func (RawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

// Unmarshal stores the bytes received into v (a *[]byte).
func (RawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// Name is "proto", so servers decode the bytes as protobuf.
func (RawCodec) Name() string { return "proto" }
