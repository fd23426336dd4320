package redisstore

import (
	"context"
	"sync/atomic"

	"github.com/apiquota/limiter"
)

// permit is the limiter.Permit of an admission held in Redis.
type permit struct {
	l       *Limiter
	seq     uint64
	settled atomic.Bool
}

// Done re-times the permit's entry to the Redis server's now. When Redis
// does not take it, the entry stays in flight there (its slot held, never
// given out twice) and the Done, timed by an estimate that is never early,
// is written with the Limiter's next call to Redis.
func (p *permit) Done() {
	if !p.settled.Swap(true) {
		_, _ = p.l.done(p.seq)
	}
}

// done marks the in-flight call seq finished and returns the server time
// Redis counts it from.
func (l *Limiter) done(seq uint64) (int64, error) {
	l.mu.Lock()
	delete(l.own.flight, seq)
	l.own.add(seq, idOf(seq), l.own.serverNow(true), true)
	l.mu.Unlock()
	v, err := l.roundTrip(context.Background(), admitScript, l.keys, l.settleArgs(opDone, seq))
	var res result
	if err == nil {
		res, err = parseResult(v, opDone)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.own.unsent[seq] = true
		l.pending.Store(true)
		return 0, err
	}
	l.own.retime(seq, res.at)
	return res.at, nil
}

// Cancel removes the permit's entry. When Redis does not take it, the entry
// stays in flight there until its lease ends or the Limiter's next call to
// Redis removes it.
func (p *permit) Cancel() {
	if p.settled.Swap(true) {
		return
	}
	l := p.l
	l.mu.Lock()
	// Forgotten first: an entry this Limiter still called its own and Redis
	// no longer held would look like lost state.
	delete(l.own.flight, p.seq)
	delete(l.own.charged, p.seq)
	l.mu.Unlock()
	if _, err := l.roundTrip(context.Background(), admitScript, l.keys, l.settleArgs(opCancel, p.seq)); err != nil {
		l.mu.Lock()
		l.own.removed = append(l.own.removed, p.seq)
		l.pending.Store(true)
		l.mu.Unlock()
	}
}

// settleArgs returns admitScript's ARGV for Done or Cancel of seq.
func (l *Limiter) settleArgs(op string, seq uint64) []any {
	// No evidence: Done and Cancel decide nothing. The rules give the
	// longest window and the TTL.
	args := append(make([]any, 0, 5+len(l.ruleArgs)), op, idOf(seq), l.leaseArg, "", 0)
	return append(args, l.ruleArgs...)
}

// localPermit is the permit of a call admitted through the fallback; its
// Done is also remembered, to be written to Redis once it answers.
type localPermit struct {
	l       *Limiter
	p       limiter.Permit
	settled atomic.Bool
}

func (p *localPermit) Done() {
	if !p.settled.Swap(true) {
		p.p.Done()
		p.l.recordLocal()
	}
}

func (p *localPermit) Cancel() {
	if !p.settled.Swap(true) {
		p.p.Cancel()
	}
}

// openPermit is the permit of a call admitted under FailOpen.
type openPermit struct{}

func (openPermit) Done()   {}
func (openPermit) Cancel() {}
