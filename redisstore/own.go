package redisstore

import (
	"strconv"
	"time"
)

// own is what one Limiter remembers of its own calls that still count, so
// that it can put them back when Redis loses its state, account for them
// when it switches to the fallback, and write later what Redis did not take.
// It is guarded by Limiter.mu; nothing here waits.
//
// Server times are µs of the Redis server's clock. A local instant is turned
// into server time with the offsets learned from the last reply: lo (server
// time minus local time at receipt) never exceeds the true offset, hi (minus
// local time at sending) never falls below it.
type own struct {
	done    []entry          // finished calls, about oldest first
	flight  map[uint64]int64 // permits in flight: seq -> end of lease
	unsent  map[uint64]bool  // entries of done that Redis does not hold yet
	removed []uint64         // cancelled permits whose removal Redis has not taken
	pause   time.Time        // a pause Redis has not taken yet (zero: none)
	horizon int64            // the log cannot be empty before this server time
	lo, hi  time.Duration    // offsets of the server clock from local time
	synced  bool             // lo and hi come from a reply
	charged map[uint64]bool  // entries already counted against the fallback
	epoch   time.Time        // local origin of lo and hi
	longest int64            // longest window, µs
}

// entry is a finished call of this Limiter, scored by its server time.
type entry struct {
	seq uint64
	at  int64
	id  any // idOf(seq), kept boxed so that the hot path builds it once
}

func newOwn(longest time.Duration) own {
	return own{
		flight:  make(map[uint64]int64),
		unsent:  make(map[uint64]bool),
		charged: make(map[uint64]bool),
		epoch:   time.Now(),
		longest: ceilDiv(longest, time.Microsecond),
	}
}

// observe learns the server clock from a reply at server time at, to a
// request sent at local time sent.
func (o *own) observe(sent time.Time, at int64) {
	server := time.Duration(at) * time.Microsecond
	o.lo, o.hi, o.synced = server-time.Since(o.epoch), server-sent.Sub(o.epoch), true
}

// serverNow estimates the server's now, never later (lo) or never earlier
// (hi) than it is.
func (o *own) serverNow(late bool) int64 {
	off := o.lo
	if late {
		off = o.hi
	}
	return int64((time.Since(o.epoch) + off) / time.Microsecond)
}

// prune forgets finished calls that left every window by server time now,
// and permits never settled whose lease ended (Redis dropped them too).
func (o *own) prune(now int64) {
	for seq, end := range o.flight { // usually empty
		if end <= now {
			delete(o.flight, seq)
			delete(o.charged, seq)
		}
	}
	i := 0
	for i < len(o.done) && o.done[i].at <= now-o.longest {
		if len(o.unsent) > 0 || len(o.charged) > 0 {
			delete(o.unsent, o.done[i].seq)
			delete(o.charged, o.done[i].seq)
		}
		i++
	}
	// Re-sliced, not copied: append moves only the live calls, when it
	// grows the array, so pruning costs O(1) a call, amortized.
	o.done = o.done[i:]
}

// add records the finished call seq, named id, at server time at.
func (o *own) add(seq uint64, id any, at int64, sent bool) {
	o.done = append(o.done, entry{seq, at, id})
	if !sent {
		o.unsent[seq] = true
	}
	o.horizon = max(o.horizon, at+o.longest)
}

// evidence returns an own call that Redis holds and that still counts at
// server time now: its seq, its id for admitScript, and its score in the
// log (seq 0 and id "" when there is none). admitScript takes the id
// alone; the caller checks the score's call against the reply with counts. A finished call is preferred: only Cancel removes a
// permit in flight.
func (o *own) evidence(now int64) (seq uint64, id any, score int64) {
	for i := len(o.done) - 1; i >= 0 && o.done[i].at > now-o.longest; i-- {
		if e := o.done[i]; !o.unsent[e.seq] {
			return e.seq, e.id, e.at
		}
	}
	for seq, end := range o.flight {
		if end > now {
			return seq, idOf(seq), -end
		}
	}
	return 0, "", 0
}

// pending reports whether Redis lacks something this Limiter knows.
func (o *own) pending() bool {
	return len(o.unsent) > 0 || len(o.removed) > 0 || !o.pause.IsZero()
}

// syncArgs returns syncScript's ARGV from the count of ids to remove on:
// what Redis lacks, or with all, every own call that still counts. It also
// returns the unsent entries it includes, for wrote.
func (o *own) syncArgs(all bool) (args []any, sent []uint64) {
	args = []any{len(o.removed)}
	for _, seq := range o.removed {
		args = append(args, idOf(seq))
	}
	for _, e := range o.done {
		if o.unsent[e.seq] {
			sent = append(sent, e.seq)
		} else if !all {
			continue
		}
		args = append(args, e.at, e.id)
	}
	if all {
		for seq, end := range o.flight {
			args = append(args, -end, idOf(seq))
		}
	}
	return args, sent
}

// wrote forgets what a sync wrote: the first removed ids, the sent entries
// and the pause, unless a later pause came since.
func (o *own) wrote(removed int, sent []uint64, pause time.Time) {
	o.removed = o.removed[removed:]
	for _, seq := range sent {
		delete(o.unsent, seq)
	}
	if !o.pause.After(pause) {
		o.pause = time.Time{}
	}
}

// restored resets the horizon after the own calls were put back: the
// evidence of other processes' calls is spent (the hold covers them), and
// the own calls are in the log again.
func (o *own) restored() {
	o.horizon = 0
	for _, e := range o.done {
		o.horizon = max(o.horizon, e.at+o.longest)
	}
}

// retime sets the server time of the finished call seq, searching from the
// newest, where a call that was just Done is.
func (o *own) retime(seq uint64, at int64) {
	for i := len(o.done) - 1; i >= 0; i-- {
		if o.done[i].seq == seq {
			o.done[i].at = at
			o.horizon = max(o.horizon, at+o.longest)
			return
		}
	}
}

// counts reports whether seq is an own call that still counts here at
// server time at.
func (o *own) counts(seq uint64, at int64) bool {
	if end, ok := o.flight[seq]; ok {
		return end > at
	}
	for i := len(o.done) - 1; i >= 0; i-- {
		if o.done[i].seq == seq {
			return o.done[i].at > at-o.longest
		}
	}
	return false
}

// uncharged returns the calls that still count at server time now within
// window (µs) and were not yet counted against the fallback, and marks them.
func (o *own) uncharged(now, window int64) int {
	n := 0
	for _, e := range o.done {
		if e.at > now-window && !o.charged[e.seq] {
			o.charged[e.seq] = true
			n++
		}
	}
	for seq, end := range o.flight {
		if end > now && !o.charged[seq] {
			o.charged[seq] = true
			n++
		}
	}
	return n
}

// idOf returns the sorted-set member of this process's call seq.
func idOf(seq uint64) string {
	var b [48]byte // one allocation: the string
	return string(strconv.AppendUint(append(b[:0], processID...), seq, 36))
}
