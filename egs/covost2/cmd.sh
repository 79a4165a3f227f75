# How jobs are launched, Kaldi style. Every launcher takes: JOB=1:N LOGFILE COMMAND...
#   run.pl   runs jobs on this machine (default)
#   slurm.pl submits an array job to Slurm: set cmd_backend=slurm, and tune the options
#            (--mem, --num-threads, --gpu, --time, --partition) below for your cluster.
cmd_backend=${cmd_backend:-local}
if [ "$cmd_backend" = slurm ]; then
  export train_cmd="slurm.pl --mem 8G --num-threads 4"
  export cuda_cmd="slurm.pl --mem 32G --gpu 1"
  export decode_cmd="slurm.pl --mem 8G"
else
  export train_cmd="run.pl"
  export cuda_cmd="run.pl"
  export decode_cmd="run.pl"
fi
