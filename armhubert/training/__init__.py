"""What the Trainer-based commands share: guards and the final save (`guarded_trainer`), fine-tuning set-up
(`finetune`), metrics (`metrics`) and loss curves (`curves`)."""
