package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestOwnPrune: what a Limiter remembers of its own calls stays bounded by
// what still counts: finished calls leave with their window, permits never
// settled with their lease.
func TestOwnPrune(t *testing.T) {
	o := newOwn(time.Second)
	o.add(1, idOf(1), 1_000_000, true)
	o.add(2, idOf(2), 1_500_000, false)
	o.flight[3] = 1_200_000
	o.charged[1], o.charged[3] = true, true

	o.prune(1_999_999)
	assert.Len(t, o.done, 2, "both still count at 1.999999s")
	assert.Empty(t, o.flight, "the lease ended at 1.2s")
	assert.NotContains(t, o.charged, uint64(3))

	o.prune(2_000_000)
	assert.Equal(t, []entry{{2, 1_500_000, idOf(2)}}, o.done, "the call at 1s stops counting at exactly 2s")
	assert.NotContains(t, o.charged, uint64(1))
	assert.True(t, o.unsent[2])
	seq, id, score := o.evidence(2_000_000)
	assert.Zero(t, seq, "an unsent call is no evidence of what Redis holds")
	assert.Empty(t, id)
	assert.Zero(t, score)

	o.prune(2_500_000)
	assert.Empty(t, o.done)
	assert.Empty(t, o.unsent)
}

// TestOwnEvidence: the newest finished call Redis holds is the evidence,
// else a permit in flight whose lease has not ended.
func TestOwnEvidence(t *testing.T) {
	o := newOwn(time.Second)
	o.flight[7] = 5_000_000
	seq, id, score := o.evidence(4_000_000)
	assert.Equal(t, uint64(7), seq)
	assert.Equal(t, idOf(7), id)
	assert.EqualValues(t, -5_000_000, score, "in flight: minus the end of its lease")
	seq, _, _ = o.evidence(5_000_000)
	assert.Zero(t, seq, "the lease ended")

	o.add(8, idOf(8), 4_100_000, true)
	o.add(9, idOf(9), 4_200_000, true)
	seq, id, score = o.evidence(4_300_000)
	assert.Equal(t, uint64(9), seq)
	assert.Equal(t, idOf(9), id)
	assert.EqualValues(t, 4_200_000, score)
	assert.EqualValues(t, 5_200_000, o.horizon, "the log holds a call until 5.2s")
}
