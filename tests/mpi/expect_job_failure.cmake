# SPDX-License-Identifier: Apache-2.0
# ctest wrapper (cmake -P) for `attn_mpi_tests --die-rank R` and `--hang-rank R` under mpirun:
# rank R dies (_exit(3) before a collective) or stops answering, and the whole job must end,
# nonzero, well before ctest's timeout, with no rank left hanging. The marker line proves the job
# got as far as the failure (a job that failed to start would also exit nonzero).
#   -DATTN_COMMAND=<the mpirun command line, a ;-list>  -DATTN_MARKER=<text rank R prints>
#   -DATTN_LIMIT_SECONDS=<how long the job may take>
execute_process(COMMAND ${ATTN_COMMAND}
                RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE errors
                TIMEOUT ${ATTN_LIMIT_SECONDS})
message(STATUS "exit: ${result}\nstdout:\n${output}\nstderr:\n${errors}")
if(result MATCHES "timeout")
  message(FATAL_ERROR "the job was still running after ${ATTN_LIMIT_SECONDS} s: a rank hangs")
endif()
if(result EQUAL 0)
  message(FATAL_ERROR "the job exited 0 although a rank died or hung")
endif()
string(FIND "${output}" "${ATTN_MARKER}" marker_at)
if(marker_at EQUAL -1)
  message(FATAL_ERROR "the job never got to the failing rank's failure (no \"${ATTN_MARKER}\")")
endif()
