package limiter

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSnapshotRestoresSpentWindow(t *testing.T) {
	l, c := newManual(t, 3, time.Minute, WithWindow(5, time.Hour))
	fill(t, l, 2)
	c.Advance(10 * time.Second)
	p, err := l.Acquire(context.Background()) // in flight: counts as made at the snapshot
	require.NoError(t, err)
	c.Advance(10 * time.Second)
	data, err := l.MarshalBinary()
	require.NoError(t, err)
	p.Done()

	// A new process at the same wall-clock time, on its own rules.
	c2 := NewManualClock(t0.Add(20 * time.Second))
	l2, err := New(3, time.Minute, WithClock(c2), WithWindow(5, time.Hour))
	require.NoError(t, err)
	require.NoError(t, l2.UnmarshalBinary(data))
	runSteps(t, l2, c2, []step{
		{20 * time.Second, 0, false},
		{time.Minute - 1, 0, false},
		{time.Minute, 0, true}, // the two calls at t0 left the minute
		{time.Minute, 0, true},
		{time.Minute, 0, false},      // the permit, made at the snapshot (+20s), holds the third slot
		{80 * time.Second, 0, false}, // it left the minute, but 5 calls fill the hour
		{time.Hour - 1, 0, false},
		{time.Hour, 0, true}, // the two calls at t0 left the hour
		{time.Hour, 0, true},
		{time.Hour, 0, false},
		{time.Hour + 20*time.Second - 1, 0, false},
		{time.Hour + 20*time.Second, 0, true}, // the permit left the hour
		{time.Hour + 20*time.Second, 0, false},
		{time.Hour + 60*time.Second, 0, true},
	})
}

func TestSnapshotCarriesPauseAndBuckets(t *testing.T) {
	l, c := newManual(t, 100, time.Second, WithBucket(2, time.Minute))
	fill(t, l, 2)
	c.Advance(5 * time.Second) // the calls left the window; the bucket holds them
	l.PauseUntil(t0.Add(30 * time.Second))
	data, err := l.MarshalBinary()
	require.NoError(t, err)

	c2 := NewManualClock(t0.Add(10 * time.Second))
	l2, err := New(100, time.Second, WithClock(c2), WithBucket(2, time.Minute))
	require.NoError(t, err)
	require.NoError(t, l2.UnmarshalBinary(data))
	assert.Equal(t, t0.Add(30*time.Second), l2.Stats().PausedUntil)
	runSteps(t, l2, c2, []step{
		{30 * time.Second, 0, false}, // the bucket, full at t0, holds its calls past the window
		{time.Minute - 1, 0, false},
		{time.Minute, 0, true},
		{time.Minute, 0, false},
	})
}

func TestSnapshotOnFreshLimiterMatchesOriginal(t *testing.T) {
	// Restored into a limiter with the same rules, it admits exactly as the
	// original does from then on.
	l, c := newManual(t, 4, time.Second, WithWindow(10, 10*time.Second), WithBucket(3, 300*time.Millisecond))
	for i := range 40 {
		c.Set(t0.Add(time.Duration(i) * 170 * time.Millisecond))
		l.Allow()
	}
	data, err := l.MarshalBinary()
	require.NoError(t, err)
	c2 := NewManualClock(c.Now())
	l2, err := New(4, time.Second, WithClock(c2), WithWindow(10, 10*time.Second), WithBucket(3, 300*time.Millisecond))
	require.NoError(t, err)
	require.NoError(t, l2.UnmarshalBinary(data))
	for i := range 200 {
		d := time.Duration(i) * 37 * time.Millisecond
		c.Advance(37 * time.Millisecond)
		c2.Advance(37 * time.Millisecond)
		require.Equal(t, l.Allow(), l2.Allow(), "call %d at +%v", i, d)
	}
}

func TestSnapshotBadDataChangesNothing(t *testing.T) {
	l, _ := newManual(t, 3, time.Minute)
	fill(t, l, 1)
	good, err := l.MarshalBinary()
	require.NoError(t, err)
	future := append([]byte(nil), good...)
	future[4] = 2
	for name, data := range map[string][]byte{
		"empty":          nil,
		"garbage":        []byte("hello, world"),
		"truncated":      good[:len(good)-1],
		"trailing bytes": append(append([]byte(nil), good...), 0),
		"future version": future,
		"huge count":     append([]byte("LMTS\x01"), 0xff, 0xff, 0xff, 0xff, 0x0f),
	} {
		l2, _ := newManual(t, 3, time.Minute)
		err := l2.UnmarshalBinary(data)
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "limiter: ", name)
		assert.Equal(t, 3, l2.Remaining(), "%s: the limiter is unchanged", name)
	}
}

// FuzzUnmarshalBinary: any data is an error or a snapshot; never a panic,
// and a limiter that accepted one still keeps within its rule.
func FuzzUnmarshalBinary(f *testing.F) {
	l, _ := newManualF(f)
	l.Allow()
	good, _ := l.MarshalBinary()
	f.Add(good)
	f.Add([]byte("LMTS\x01\x00\x00\x00"))
	f.Add([]byte("LMTS\x01\x02\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, c := newManual(t, 3, time.Minute, WithBucket(2, time.Second))
		if err := l.UnmarshalBinary(data); err != nil {
			require.Equal(t, 2, l.Remaining())
			return
		}
		n := 0
		for range 5 {
			if l.Allow() {
				n++
			}
		}
		require.LessOrEqual(t, n, 2)
		c.Advance(time.Hour)
		require.GreaterOrEqual(t, l.Remaining(), 0)
	})
}

func newManualF(f *testing.F) (*Limiter, *ManualClock) {
	c := NewManualClock(t0)
	l, err := New(3, time.Minute, WithClock(c), WithBucket(2, time.Second))
	if err != nil {
		f.Fatal(err)
	}
	return l, c
}
