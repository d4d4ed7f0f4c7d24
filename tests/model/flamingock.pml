/*
 * The run protocol of Flamingock, as a Promela model for Spin (docs/reliability.md, "The protocol,
 * model-checked"; checked by tests/model/test_spin.py).
 *
 * Modelled: the pipeline lock's lease (a key that may vanish at any moment), the fencing token
 * issued by the audit database, the fenced state entries (token check and state re-read in the
 * entry's own transaction), the three strategies of docs/semantics.md section 5, the resolver's
 * reading of each latest state (section 4) and reconciliation from the marker or a verify probe.
 * Every runner may crash (kill -9) between any two steps and may pause for any length of time:
 * interleaving is asynchronous, so a pause longer than the lease is a runner that does not move
 * while the lock store drops its key.
 *
 * Compile-time switches (spin -D...):
 *   NR=<n>              number of runs (runners), 2 by default; each takes the lock once at most
 *   NO_FENCE            mutant: the fence check is gone (no token check, no state re-read)
 *   NO_TOKEN            the token check alone is gone (the re-read stays)
 *   NO_REREAD           the state re-read alone is gone (the token check stays)
 *   STARTED_AS_APPLIED  mutant: the resolver reads STARTED as applied (no evidence asked)
 *   NO_MARKER_KEY       mutant: the marker table has no unique key per change and generation
 *   STRATEGIES_FIXED    both changes take the strategies S0 and S1 (default: every pair, chosen
 *                       nondeterministically at the start, so one search covers all 16 pairs)
 *   PG_STATEMENT        refinement: the audit writer's PostgreSQL statement CTE by CTE, with its
 *                       snapshot and row locks, instead of one atomic step (see fenced_entry)
 *   PG_HEAD_FIRST       with PG_STATEMENT: the chain head locked before the fence (a candidate fix)
 *   PG_ISSUE_WAITS      with PG_STATEMENT: the fix in the code (locks/base.py fence_issue): after its
 *                       nextval, the token issuance records the token in the fence row, so it waits
 *                       while another runner's fenced entry holds that row (until it commits)
 *
 * Properties, as assertions (both are state invariants, []p, checked at the only transitions
 * that can falsify them, which needs no never claim):
 *   P1 "applied at most once":  effect[c] <= 1 after every effect on the target.
 *   P2 "no unproven applied":   effect[c] >= 1 whenever a change is taken as applied: the
 *      resolver's SKIP of an applied state, a reconciliation's APPLIED (marker row present,
 *      or verify probe true) and every APPLIED entry committed. A STARTED change may become
 *      applied only through the evidence read from its target.
 */

#ifndef NR
#define NR 2
#endif
#define NC 2                    /* changes, both in one stage, in this order */

/* strategies (changes_app/definitions.py Strategy; the verify probe: ChangeDefinition.has_verify) */
#define SHARED   1              /* shared transaction: the change's target is the audit database */
#define MARKER   2              /* marker: a transactional target in another database */
#define NONTX    3              /* non-transactional, without a verify probe */
#define NONTX_V  4              /* non-transactional, with a verify probe */

/* latest ledger state of a change (audit_app ChangeState.state) */
#define NONE        0
#define STARTED     1
#define APPLIED     2
#define ROLLED_BACK 3

/* the plan's next action (changes_app/pipeline/plan.py Action) */
#define A_DONE      0           /* settled in this run (reconciled), or nothing to do */
#define A_APPLY     1
#define A_SKIP      2
#define A_RECONCILE 3
#define A_MANUAL    4

/* ---- shared state ----------------------------------------------------------------------- */

/* The audit database: it survives every crash. */
byte newest;                    /* the newest fencing token issued (fence_issue: a sequence) */
byte st[NC];                    /* latest state per change (ChangeState.state) */
byte eid[NC];                   /* latest entry per change (ChangeState.entry_id; 0: no entry) */

/* The lock store: Redis, which may lose its keys, or the database lease row, which expires. */
byte key;                       /* 0: free; otherwise the run holding the lease */

#ifdef PG_STATEMENT
/* Row locks of the audit database held until commit (PostgreSQL): the fence row, the chain head. */
byte fenceLock, headLock;
#endif

/* The targets. */
bool marker[NC];                /* marker row of the change's generation in its separate database */
byte effect[NC];                /* how many times the change's effect was made (ghost: P1, P2) */
byte strat[NC];

/* The fence check of audit_record (audit_app/services.py; on PostgreSQL in the one statement of
 * audit_app/writer_postgresql.py _statement: CTE "f" is Lease.statement, CTE "st" the re-read).
 * Both run in the entry's transaction. By default the check and the commit are one atomic step:
 * exact on SQLite, whose IMMEDIATE transaction holds the only write lock from its first statement
 * to COMMIT. On PostgreSQL they are not (PG_STATEMENT refines it; docs/reliability.md has what the
 * checker found there). */
#if defined(NO_FENCE) || defined(NO_TOKEN)
#define TOKEN_OK        true
#else
#define TOKEN_OK        (tok == newest)
#endif
#if defined(NO_FENCE) || defined(NO_REREAD)
#define REREAD_OK(c)    true
#else
#define REREAD_OK(c)    (eid[c] == exp[c])
#endif

#if defined(NO_FENCE) || defined(NO_REREAD)
#define PG_REREAD_OK(c) true
#else
#define PG_REREAD_OK(c) (cur == exp[c])
#endif

#define P1(c)   assert(effect[c] <= 1)          /* applied at most once */
#define P2(c)   assert(effect[c] >= 1)          /* taken as applied only with its effect present */

/* Crashes. A kill -9 may come before any step that changes the audit database, the lock store or
 * a target: the process stops, its open transactions roll back, and the lease stays in the store
 * until it expires. A crash between two steps is the crash before the second; a crash right after
 * a pure read (the plan, the evidence) leaves what a crash before it leaves. So "crash at every
 * step" is an alternative "goto crashed" offered with each such step, which adds no intermediate
 * state. A dead run's locals are cleared, so that all dead runs are one state. */

/* An entry commits: its state becomes the change's latest (ChangeState, the projection). With
 * fx, the change's effect commits with it (the shared transaction). */
inline commit_entry(c, s, fx) {
	if
	:: fx -> effect[c]++; P1(c)
	:: else -> skip
	fi;
	st[c] = s; eid[c]++; exp[c] = eid[c]; ok = 1; moved = 0;
	printf("run %d: change %d: entry %d committed, state %d, token %d, effect with it: %d\n", me, c, eid[c], s, tok, fx);
	if
	:: s == APPLIED -> P2(c)
	:: else -> skip
	fi
}

inline refuse_entry(c, s) {
	ok = 0; moved = TOKEN_OK;
	if
	:: moved -> printf("run %d: change %d: entry of state %d refused: StateMoved\n", me, c, s)
	:: else -> printf("run %d: change %d: entry of state %d refused: FenceRefused\n", me, c, s)
	fi
}

/* Executor.state_entry -> audit_record(fence=lease, expected_entry_id=exp[c]): one fenced entry.
 * ok: committed. moved: refused by the re-read (StateMoved) rather than the fence (FenceRefused).
 * fx: the shared strategy, whose effect is in the same transaction (Executor.apply_shared). */
inline fenced_entry(c, s, fx) {
#ifndef PG_STATEMENT
	if
	:: goto crashed
	:: atomic {
		if
		:: TOKEN_OK && REREAD_OK(c) -> commit_entry(c, s, fx)
		:: else -> refuse_entry(c, s)
		fi
	   }
	fi
#else
	/* PostgreSQL, READ COMMITTED: writer_postgresql._statement, CTE by CTE. The statement's
	 * snapshot is taken when it starts; CTE "f" (Lease.statement) locks the fence row and checks
	 * the token; CTE "st" re-reads the change's row FOR UPDATE (the latest version of a row the
	 * snapshot has; nothing for a row it has not: the first entry of a change); CTE "h" locks the
	 * chain head; then the insert, the projection (ON CONFLICT DO UPDATE) and COMMIT. Once sent,
	 * the server finishes the statement whatever happens to the client: no crash inside. A fencing
	 * token issued meanwhile (nextval, which takes no row lock) does not stop it; with
	 * PG_ISSUE_WAITS the new holder's issuance then waits for this statement's commit. */
	if
	:: goto crashed
	:: snap = (eid[c] != 0)
	fi;
#ifdef PG_HEAD_FIRST
	atomic { headLock == 0 -> headLock = me }   /* a candidate fix: the chain head before the fence */
#endif
	atomic { fenceLock == 0 -> fenceLock = me; fok = TOKEN_OK }
	atomic { if :: snap -> cur = eid[c] :: else -> cur = 0 fi }
#ifndef PG_HEAD_FIRST
	atomic { headLock == 0 -> headLock = me }
#endif
	atomic {
		if
		:: fok && PG_REREAD_OK(c) -> commit_entry(c, s, fx)
		:: else -> refuse_entry(c, s); moved = fok
		fi;
		fenceLock = 0; headLock = 0; snap = 0; fok = 0; cur = 0
	}
#endif
}

/* plan.py resolve(): the next action from the latest state, read once for the whole plan
 * (services.change_states, one query) after the lock is held (Executor.execute_pipeline). */
inline resolve(c) {
	exp[c] = eid[c];
	if
	:: st[c] == NONE || st[c] == ROLLED_BACK -> act[c] = A_APPLY
	:: st[c] == APPLIED -> act[c] = A_SKIP
	:: st[c] == STARTED ->
#ifdef STARTED_AS_APPLIED
		act[c] = A_SKIP
#else
		if
		:: strat[c] == MARKER || strat[c] == NONTX_V -> act[c] = A_RECONCILE
		:: else -> act[c] = A_MANUAL     /* shared: cannot occur; non-transactional: an issue */
		fi
#endif
	fi;
	if
	:: act[c] == A_SKIP -> P2(c)
	:: else -> skip
	fi
}

/* ---- the lock store --------------------------------------------------------------------- */

/* At any moment the key may vanish: the lease expired while its holder was paused or dead
 * (RedisLeaseLock: SET PX; DatabaseLeaseLock: expires_at), or Redis restarted empty. The fencing
 * token does not go back: it comes from the audit database. */
active proctype LockStore()
{
end:	do
	:: atomic { key != 0 -> printf("lock store: the key of run %d vanished (lease expired, or Redis lost it)\n", key); key = 0 }
	od
}

/* ---- one run ------------------------------------------------------------------------------ */

proctype Runner(byte me)
{
	byte tok;               /* Lease.token */
	byte c;
	byte act[NC];           /* PlanItem.action */
	byte exp[NC];           /* PlanItem.entry_id, then the run's own latest entry */
	bool ok, moved, present;
#ifdef PG_STATEMENT
	bool snap, fok;         /* the statement's snapshot has the change's row; the fence CTE matched */
	byte cur;               /* what the re-read CTE found */
#endif

	/* Executor.acquire -> RedisLeaseLock.try_acquire: SET NX PX. Giving up (LOCKED) is a crash here. */
	if
	:: goto crashed
	:: atomic { key == 0 -> key = me; printf("run %d: lease taken\n", me) }
	fi;
	/* locks/base.py fence_issue: nextval of the lock's sequence, after the lease (Redis). The
	 * DatabaseLeaseLock takes both in one transaction: a subset of these interleavings. */
	if
	:: goto crashed
	:: atomic { newest++; tok = newest; printf("run %d: fencing token %d\n", me, tok) }
	fi;
#if defined(PG_STATEMENT) && defined(PG_ISSUE_WAITS)
	/* fence_issue -> fence_advance: UPDATE fence SET token = GREATEST(token, tok), in the
	 * transaction of the nextval: it waits for the fence row, which a fenced entry already past its
	 * fence check (CTE "f") holds until it commits. No plan before that commit. */
	if
	:: goto crashed
	:: atomic { fenceLock == 0 -> printf("run %d: token %d recorded in the fence row\n", me, tok) }
	fi;
#endif
#ifdef PG_STATEMENT
	/* Executor.acquire: the lock.acquired entry, before the plan is read; it takes the chain head. */
	if
	:: goto crashed
	:: atomic { headLock == 0 -> printf("run %d: lock.acquired committed\n", me) }
	fi;
#endif

	/* Executor.execute_pipeline -> plan(): the plan read again under the lock, in one query. */
	d_step {
		c = 0;
		do
		:: c < NC -> resolve(c); c++
		:: else -> break
		od;
		c = 0;
		printf("run %d: plan: change 0 %d, change 1 %d (1 APPLY, 2 SKIP, 3 RECONCILE, 4 MANUAL_INTERVENTION)\n", me, act[0], act[1])
	};

	/* plan.py _hold_stage: a change needing a human blocks the whole stage. */
	if
	:: act[0] == A_MANUAL || act[1] == A_MANUAL -> goto release
	:: else -> skip
	fi;

	/* Executor.execute_stage: reconcile first (Executor.reconcile). */
	do
	:: c < NC && act[c] == A_RECONCILE ->
		/* target.marker_lookup (marker) or change.verify (non-transactional): the evidence. */
		atomic {
			if
			:: strat[c] == MARKER -> present = marker[c]
			:: else -> present = (effect[c] > 0)
			fi;
			printf("run %d: change %d: evidence read, effect present: %d\n", me, c, present)
		}
		if
		:: present ->
			fenced_entry(c, APPLIED, 0);        /* APPLIED with the evidence (reconciled) */
			if
			:: !ok -> goto release            /* refused: the exception stops the run */
			:: else -> act[c] = A_DONE
			fi
		:: !present && strat[c] == MARKER ->
			fenced_entry(c, ROLLED_BACK, 0);    /* no marker: the target never committed; apply */
			if
			:: !ok -> goto release
			:: else -> act[c] = A_APPLY
			fi
		:: else -> goto release                /* verify found it absent: needs a human */
		fi;
		present = 0;
		c++
	:: c < NC && act[c] != A_RECONCILE -> c++
	:: c == NC -> c = 0; break
	od;

	/* Executor.execute_stage: apply in order (Executor.apply picks the strategy). */
	do
	:: c < NC && act[c] == A_APPLY ->
		if
		:: strat[c] == SHARED ->
			/* Executor.apply_shared: apply, fence check, re-read and APPLIED in one transaction
			 * of the audit database: the effect commits with its entry or not at all. */
			fenced_entry(c, APPLIED, 1)
		:: strat[c] == MARKER ->
			/* Executor.apply_marker: STARTED, then the target transaction, then APPLIED. */
			fenced_entry(c, STARTED, 0);
			if
			:: ok ->
				/* target.marker_insert and the change's apply: one transaction of the other
				 * database, not fenced (the fence lives in the audit database); the marker's
				 * unique key (change, generation) guards it. */
				if
				:: goto crashed
				:: atomic {
#ifdef NO_MARKER_KEY
					marker[c] = 1; effect[c]++;
					printf("run %d: change %d: target committed marker and effect (%d)\n", me, c, effect[c]); P1(c)
#else
					if
					:: !marker[c] -> marker[c] = 1; effect[c]++;
						printf("run %d: change %d: target committed marker and effect (%d)\n", me, c, effect[c]); P1(c)
					:: else ->                   /* MarkerConflict: already committed */
						printf("run %d: change %d: marker already present, nothing applied\n", me, c)
					fi
#endif
				   }
				fi;
				fenced_entry(c, APPLIED, 0)      /* or APPLIED "marker already present" */
			:: else -> skip
			fi
		:: strat[c] == NONTX || strat[c] == NONTX_V ->
			/* Executor.apply_non_transactional: STARTED (fenced), apply, APPLIED (fenced). */
			fenced_entry(c, STARTED, 0);
			if
			:: ok ->
				if
				:: goto crashed
				:: atomic {                      /* the target acts: no transaction, no fence */
					effect[c]++; printf("run %d: change %d: effect made (%d)\n", me, c, effect[c]); P1(c)
				   }
				fi;
				fenced_entry(c, APPLIED, 0)
			:: else -> skip
			fi
		fi;
		/* Executor.apply: FenceRefused ends the run (ABORTED); StateMoved is ALREADY_APPLIED. */
		if
		:: !ok && !moved -> goto release
		:: else -> skip
		fi;
		c++
	:: c < NC && act[c] != A_APPLY -> c++
	:: c == NC -> break
	od;

release:
	/* Executor.release -> Lease.release: compare-and-delete, a no-op once the key is another's. */
	if
	:: goto crashed
	:: atomic {
		if
		:: key == me -> key = 0
		:: else -> skip
		fi;
		printf("run %d: released\n", me);
		tok = 0; c = 0; act[0] = 0; act[1] = 0; exp[0] = 0; exp[1] = 0; ok = 0; moved = 0; present = 0;
		goto end
	   }
	fi;
crashed:
	atomic {
		printf("run %d: killed\n", me);
		tok = 0; c = 0; act[0] = 0; act[1] = 0; exp[0] = 0; exp[1] = 0; ok = 0; moved = 0; present = 0
	}
end:
	skip
}

#ifndef S0
#define S0 MARKER
#endif
#ifndef S1
#define S1 NONTX_V
#endif

init
{
	byte i = 1;
	atomic {
#ifdef STRATEGIES_FIXED
		strat[0] = S0; strat[1] = S1;
#else
		if
		:: strat[0] = SHARED
		:: strat[0] = MARKER
		:: strat[0] = NONTX
		:: strat[0] = NONTX_V
		fi;
		if
		:: strat[1] = SHARED
		:: strat[1] = MARKER
		:: strat[1] = NONTX
		:: strat[1] = NONTX_V
		fi;
#endif
		printf("strategies: change 0 %d, change 1 %d (1 shared, 2 marker, 3 non-tx, 4 non-tx with verify)\n", strat[0], strat[1]);
		do
		:: i <= NR -> run Runner(i); i++
		:: else -> break
		od
	}
}
