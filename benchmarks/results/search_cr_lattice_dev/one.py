from case import *
src, reg, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
case, pts = make(src, reg, seed)
t = time.perf_counter(); c0 = time.process_time()
r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=params, seed=0)
c = r.details["consistency"]
print(src, seed, "hdr %.1f" % tre(np.eye(4), case, pts), "TRE %.2f" % tre(r.moving_to_fixed, case, pts), "flag", r.success, "cons %.2f" % c["mm"],
      "fwd %.2f bwd %.2f" % (tre(c["forward_moving_to_fixed_ras"], case, pts), tre(np.linalg.inv(c["backward_fixed_to_moving_ras"]), case, pts)),
      "metric %.3f" % r.metric, [(round(x['mm'],2), x['restarted_from_the_other']) for x in c["passes"]], "wall %.1f cpu %.1f" % (time.perf_counter()-t, time.process_time()-c0))
