package limiter

import (
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// A snapshot is, after a 4-byte magic and a version byte:
//
//	uvarint k, then k wall-clock instants in Unix nanoseconds, oldest
//	first: the first as a varint, the others as uvarint deltas
//	varint  the end of the pause in Unix nanoseconds, 0 for none
//	uvarint m, then m buckets: uvarint burst, varint every, varint the
//	instant the bucket is empty in Unix nanoseconds
//
// The instants are the calls that still count in the longest window (the
// calls of every shorter window among them), and each call in flight as
// made at the snapshot. The buckets carry what the instants cannot: calls
// older than every window that a bucket still holds.
const (
	snapshotMagic   = "LMTS"
	snapshotVersion = 1
)

var (
	_ encoding.BinaryMarshaler   = (*Limiter)(nil)
	_ encoding.BinaryUnmarshaler = (*Limiter)(nil)
)

// snapshot is a decoded snapshot, in wall-clock Unix nanoseconds.
type snapshot struct {
	calls   []int64
	paused  int64
	buckets []snapBucket
}

type snapBucket struct {
	burst int
	every time.Duration
	tat   int64
}

// MarshalBinary returns a snapshot of the calls that still count in some
// rule, with their wall-clock instants (a permit in flight counts as a call
// made now), and of the pause. Save it before a process exits and give it
// to UnmarshalBinary after a restart, so that the new process does not send
// the burst that the server would refuse. It never fails.
func (l *Limiter) MarshalBinary() ([]byte, error) {
	now := l.lock(l.since())
	s := l.snapshotLocked(now)
	l.unlock()
	return s.encode(), nil
}

func (l *Limiter) snapshotLocked(now time.Duration) snapshot {
	wall := func(d time.Duration) int64 { return l.epoch.Add(d).UnixNano() }
	longest := &l.rules.windows[0]
	for i := range l.rules.windows {
		if w := &l.rules.windows[i]; w.size > longest.size {
			longest = w
		}
	}
	var s snapshot
	for i := range longest.n {
		s.calls = append(s.calls, wall(longest.at(i)))
	}
	for range l.inflight {
		s.calls = append(s.calls, wall(now))
	}
	if l.pausedUntil > now {
		s.paused = wall(l.pausedUntil)
	}
	for _, b := range l.rules.buckets {
		if b.tat > now {
			s.buckets = append(s.buckets, snapBucket{b.burst, b.every, wall(b.tat)})
		}
	}
	return s
}

// UnmarshalBinary adds the calls and the pause of a snapshot that
// MarshalBinary made, on this limiter's own rules: it then admits exactly
// as if those calls had gone through it (bucket state is exact when the
// rules match those of the limiter that made the snapshot, and never
// looser). Instants later than now count as now. Data that is not a
// snapshot (garbage, truncated, a future version) is an error, and the
// limiter is unchanged.
func (l *Limiter) UnmarshalBinary(data []byte) error {
	s, err := decodeSnapshot(data)
	if err != nil {
		return err
	}
	now := l.lock(l.since())
	l.restoreLocked(s, now)
	if h := l.queue.head; h != nil {
		h.wake() // its turn may be later now
	}
	l.unlock()
	return nil
}

func (l *Limiter) restoreLocked(s snapshot, now time.Duration) {
	at := func(ns int64) time.Duration {
		return min(time.Unix(0, ns).Sub(l.epoch), now)
	}
	calls := make([]time.Duration, len(s.calls))
	for i, ns := range s.calls {
		calls[i] = at(ns)
	}
	for i := range l.rules.windows {
		l.rules.windows[i].merge(calls, now)
	}
	for i := range l.rules.buckets {
		b := &l.rules.buckets[i]
		tat := time.Duration(math.MinInt64) // the calls replayed alone
		for _, c := range calls {
			tat = addSat(max(tat, c), b.every)
		}
		for _, sb := range s.buckets {
			if sb.burst == b.burst && sb.every == b.every {
				tat = max(tat, time.Unix(0, sb.tat).Sub(l.epoch))
			}
		}
		b.tat = max(b.tat, min(tat, addSat(now, mulSat(b.burst, b.every))))
	}
	if s.paused != 0 {
		l.pausedUntil = max(l.pausedUntil, time.Unix(0, s.paused).Sub(l.epoch))
	}
}

// merge adds the calls made at the sorted instants calls, none after now,
// to the log. Only the newest limit instants are kept: an older one can
// never decide an admission.
func (w *window) merge(calls []time.Duration, now time.Duration) {
	log := make([]time.Duration, 0, w.n+len(calls))
	for i := range w.n {
		log = append(log, w.at(i))
	}
	for _, c := range calls {
		if addSat(c, w.size) > now {
			log = append(log, c)
		}
	}
	slices.Sort(log)
	log = log[max(0, len(log)-w.limit):]
	w.ring = append(make([]time.Duration, 0, max(minRing, len(log))), log...)
	w.ring = w.ring[:cap(w.ring)]
	w.head, w.n = 0, len(log)
}

func (s snapshot) encode() []byte {
	b := append([]byte(snapshotMagic), snapshotVersion)
	b = binary.AppendUvarint(b, uint64(len(s.calls)))
	for i, c := range s.calls {
		if i == 0 {
			b = binary.AppendVarint(b, c)
		} else {
			b = binary.AppendUvarint(b, uint64(c-s.calls[i-1]))
		}
	}
	b = binary.AppendVarint(b, s.paused)
	b = binary.AppendUvarint(b, uint64(len(s.buckets)))
	for _, sb := range s.buckets {
		b = binary.AppendUvarint(b, uint64(sb.burst))
		b = binary.AppendVarint(b, int64(sb.every))
		b = binary.AppendVarint(b, sb.tat)
	}
	return b
}

var errSnapshotTruncated = errors.New("limiter: snapshot truncated or corrupt")

// openSnapshot checks the magic and the version at the start of data, a
// snapshot of what, and returns a reader of the rest.
func openSnapshot(data []byte, magic string, version byte, what string) (reader, error) {
	if len(data) < len(magic)+1 || string(data[:len(magic)]) != magic {
		return reader{}, fmt.Errorf("limiter: not a %s snapshot", what)
	}
	if v := data[len(magic)]; v != version {
		return reader{}, fmt.Errorf("limiter: %s snapshot version %d not supported (want %d)", what, v, version)
	}
	return reader{data[len(magic)+1:], nil}, nil
}

func decodeSnapshot(data []byte) (snapshot, error) {
	var s snapshot
	r, err := openSnapshot(data, snapshotMagic, snapshotVersion, "limiter")
	if err != nil {
		return s, err
	}
	k := r.count()
	for i := 0; i < k && r.err == nil; i++ {
		if i == 0 {
			s.calls = append(s.calls, r.varint())
			continue
		}
		d := r.uvarint()
		prev := s.calls[i-1]
		if d > uint64(1<<63-1-prev) {
			r.fail()
		}
		s.calls = append(s.calls, prev+int64(d))
	}
	s.paused = r.varint()
	m := r.count()
	for i := 0; i < m && r.err == nil; i++ {
		sb := snapBucket{burst: int(min(r.uvarint(), 1<<31)), every: time.Duration(r.varint()), tat: r.varint()}
		if sb.burst < 1 || sb.every <= 0 {
			r.fail()
		}
		s.buckets = append(s.buckets, sb)
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail()
	}
	return s, r.err
}

// reader decodes varints, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() { r.err = errSnapshotTruncated; r.b = nil }

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a number of entries, each at least one byte long, so that
// hostile data cannot make the decoder allocate more than it holds.
func (r *reader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail()
		return 0
	}
	return int(n)
}
