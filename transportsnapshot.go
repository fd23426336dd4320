package limiter

import (
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
)

// A Transport's snapshot is, after a 4-byte magic and a version byte:
//
//	uvarint n, then n bytes: the connection's Limiter snapshot
//	uvarint k, then k routes, each:
//	  uvarint n, then n bytes: the route's pattern, as Route was given it
//	  uvarint n, then n bytes: the route's Limiter snapshot
//
// Each Limiter snapshot is what Limiter.MarshalBinary returns, in its own
// format and version; this one only frames them.
const (
	transportSnapshotMagic   = "LMTT"
	transportSnapshotVersion = 1
)

var (
	_ encoding.BinaryMarshaler   = (*Transport)(nil)
	_ encoding.BinaryUnmarshaler = (*Transport)(nil)
)

// MarshalBinary returns a snapshot of the Transport's limiters: the
// connection's *Limiter and the limiter of each route that a request has
// used, keyed by the route's pattern. Each part is what
// Limiter.MarshalBinary returns; the parts are taken one after another,
// not at one instant. What the Transport learned from the server is not
// saved: it is learned again from the first responses.
//
// Only a Transport from NewTransport on a *Limiter has a snapshot: on a
// Transport from NewGroupTransport, whose state is per key, or on another
// Acquirer, MarshalBinary returns an error. It is safe to call
// concurrently with RoundTrip.
func (t *Transport) MarshalBinary() ([]byte, error) {
	if err := t.snapshotable(); err != nil {
		return nil, err
	}
	conn, err := t.lim.MarshalBinary()
	if err != nil {
		return nil, err
	}
	b := append([]byte(transportSnapshotMagic), transportSnapshotVersion)
	b = appendBytes(b, conn)
	// The routes' limiters first: the table loaded after them has every
	// route they were made for, since tables only grow.
	rs := t.single.routeList()
	rt := t.routes.Load()
	k := 0
	for _, r := range rs {
		if r.l != nil {
			k++
		}
	}
	b = binary.AppendUvarint(b, uint64(k))
	for i, r := range rs {
		if r.l == nil {
			continue // never used: nothing to keep
		}
		part, err := r.l.MarshalBinary()
		if err != nil {
			return nil, err
		}
		b = appendBytes(b, []byte(rt.specs[i].pattern))
		b = appendBytes(b, part)
	}
	return b, nil
}

// UnmarshalBinary restores a snapshot that MarshalBinary made into this
// Transport's limiters, as Limiter.UnmarshalBinary does each: the
// connection's, and each route's, found by its pattern. Register the
// routes with Route before. A route registered but absent from the
// snapshot is left as it is.
//
// Restoring is all or nothing: data that is not a Transport snapshot
// (garbage, truncated, a future version), a part that is not a Limiter
// snapshot, or a route whose pattern is not registered is an error, and
// then no limiter has changed. As MarshalBinary, it returns an error on a
// Transport without a snapshot. It is safe to call concurrently with
// RoundTrip.
func (t *Transport) UnmarshalBinary(data []byte) error {
	if err := t.snapshotable(); err != nil {
		return err
	}
	s, err := decodeTransportSnapshot(data)
	if err != nil {
		return err
	}
	rt := t.routes.Load()
	routes, err := t.restoreTargets(rt, s)
	if err != nil {
		return err
	}
	// Every part is valid: Limiter.UnmarshalBinary cannot fail now.
	if err := t.lim.UnmarshalBinary(s.conn); err != nil {
		return err
	}
	for _, r := range routes {
		l := t.single.installRoute(r.index, r.fresh)
		if err := l.UnmarshalBinary(r.data); err != nil {
			return err
		}
	}
	return nil
}

// snapshotable reports why t has no snapshot, or nil when it has one.
func (t *Transport) snapshotable() error {
	switch {
	case t.group != nil:
		return errors.New("limiter: a Transport from NewGroupTransport has no snapshot: its state is per key")
	case t.lim == nil && t.acquirer == nil:
		return errNoLimiter
	case t.lim == nil:
		return fmt.Errorf("limiter: a Transport on a %T has no snapshot: only one on a *Limiter has", t.acquirer)
	}
	return nil
}

// transportSnapshot is a decoded Transport snapshot whose parts are valid
// Limiter snapshots.
type transportSnapshot struct {
	conn   []byte
	routes []routePart
}

type routePart struct {
	pattern string
	data    []byte
}

var errTransportSnapshotTruncated = errors.New("limiter: Transport snapshot truncated or corrupt")

// decodeTransportSnapshot splits data into its parts and checks each one
// with the Limiter's own decoder.
func decodeTransportSnapshot(data []byte) (transportSnapshot, error) {
	var s transportSnapshot
	r, err := openSnapshot(data, transportSnapshotMagic, transportSnapshotVersion, "Transport")
	if err != nil {
		return s, err
	}
	s.conn = takeBytes(&r)
	k := r.count()
	seen := make(map[string]bool, k)
	for i := 0; i < k && r.err == nil; i++ {
		p := routePart{pattern: string(takeBytes(&r)), data: takeBytes(&r)}
		if seen[p.pattern] {
			return s, fmt.Errorf("limiter: Transport snapshot has route %q twice", p.pattern)
		}
		seen[p.pattern] = true
		s.routes = append(s.routes, p)
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail()
	}
	if r.err != nil {
		return s, errTransportSnapshotTruncated
	}
	if _, err := decodeSnapshot(s.conn); err != nil {
		return s, &partError{"Transport snapshot, the connection's limiter", err}
	}
	for _, p := range s.routes {
		if _, err := decodeSnapshot(p.data); err != nil {
			return s, &partError{fmt.Sprintf("Transport snapshot, route %q", p.pattern), err}
		}
	}
	return s, nil
}

// restoreTarget is a route that a snapshot restores: its index, its part,
// and a new limiter for it in case it has none yet.
type restoreTarget struct {
	index int
	data  []byte
	fresh *Limiter
}

// restoreTargets finds the route of each part of s, or fails, changing
// nothing, when a pattern is not registered.
func (t *Transport) restoreTargets(rt *routeTable, s transportSnapshot) ([]restoreTarget, error) {
	var out []restoreTarget
	for _, p := range s.routes {
		i := -1
		if rt != nil {
			i = rt.index(p.pattern)
		}
		if i < 0 {
			return nil, fmt.Errorf("limiter: Transport snapshot has route %q, which is not registered", p.pattern)
		}
		fresh, err := rt.specs[i].limiter(t.clockOf())
		if err != nil {
			return nil, routeError(p.pattern, err)
		}
		out = append(out, restoreTarget{i, p.data, fresh})
	}
	return out, nil
}

// index returns the index of the route registered with pattern, or -1.
func (rt *routeTable) index(pattern string) int {
	for i := range rt.specs {
		if rt.specs[i].pattern == pattern {
			return i
		}
	}
	return -1
}

// appendBytes appends p to b, after its length.
func appendBytes(b, p []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(p))), p...)
}

// takeBytes reads what appendBytes wrote.
func takeBytes(r *reader) []byte {
	n := r.count()
	if r.err != nil {
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}
