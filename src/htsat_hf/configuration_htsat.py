"""HTS-AT model configuration."""

from transformers import PretrainedConfig

from .errors import InputError


class HTSATConfig(PretrainedConfig):
    r"""
    Configuration of an HTS-AT model (Chen et al., "HTS-AT: A Hierarchical Token-Semantic Audio Transformer for
    Sound Classification and Detection", ICASSP 2022). The defaults reproduce the released AudioSet model.

    The config is the single source of every hyperparameter: the feature extractor saved beside a model carries
    the same front-end values, and [`HTSATFeatureExtractor.from_config`] builds one from it.

    Args:
        sampling_rate (`int`, defaults to 32000): sampling rate of the input waveform in Hz.
        hop_length (`int`, defaults to 320): STFT hop in samples (one spectrogram frame).
        n_fft (`int`, defaults to 1024): FFT size, equal to the (periodic Hann) window length.
        num_mel_bins (`int`, defaults to 64): number of mel filters.
        f_min (`float`, defaults to 50.0): lowest mel filter edge in Hz.
        f_max (`float`, defaults to 14000.0): highest mel filter edge in Hz (kept at 14000 for 16 kHz models, as in
            the original Speech Commands recipe; the filters above Nyquist are then empty).
        spec_size (`int`, defaults to 256): side of the square image the spectrogram is folded into.
        patch_size (`int`, defaults to 4): side and stride of the patch embedding convolution.
        embed_dim (`int`, defaults to 96): width of the first Swin stage; each later stage doubles it.
        depths (`list[int]`, defaults to `[2, 2, 6, 2]`): number of Swin blocks per stage.
        num_heads (`list[int]`, defaults to `[4, 8, 16, 32]`): attention heads per stage.
        window_size (`int`, defaults to 8): side of the attention window in tokens.
        mlp_ratio (`float`, defaults to 4.0): hidden width of the block MLP relative to the stage width.
        qkv_bias (`bool`, defaults to `True`): whether the fused query/key/value projection has a bias.
        hidden_act (`str`, defaults to `"gelu"`): activation of the block MLP (exact GELU).
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after the attention projection and in the MLP.
        attention_dropout (`float`, defaults to 0.0): dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth, rising linearly from 0 over all blocks.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        batch_norm_eps (`float`, defaults to 1e-5): epsilon of the BatchNorm over mel bins applied to the log-mel.
        use_token_semantic_head (`bool`, defaults to `True`): the token-semantic convolution head of the paper;
            `False` gives a linear head on pooled tokens.
        spec_augment_time_stripes (`int`, defaults to 2): SpecAugment time stripes zeroed per example in training.
        spec_augment_time_width (`int`, defaults to 64): stripes are 0 to `width - 1` frames wide.
        spec_augment_freq_stripes (`int`, defaults to 2): SpecAugment frequency stripes per example in training.
        spec_augment_freq_width (`int`, defaults to 8): stripes are 0 to `width - 1` mel bins wide.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal weight initialisation.
        kwargs: `num_labels`, `id2label`, `label2id`, `problem_type` and the other [`PretrainedConfig`] arguments.
            `problem_type` defaults to `"multi_label_classification"` (AudioSet, sigmoid scores); use
            `"single_label_classification"` for softmax tasks such as ESC-50.

    Raises:
        InputError: values that cannot form an HTS-AT (stage lists of different lengths, a spec_size the patch and
            window grid cannot divide, widths not divisible by their heads, f_min >= f_max).

    Example:

    ```python
    >>> from htsat_hf import HTSATConfig, HTSATForAudioClassification
    >>> config = HTSATConfig(num_labels=50, problem_type="single_label_classification")
    >>> model = HTSATForAudioClassification(config)
    ```
    """

    model_type = "htsat"

    def __init__(
        self,
        sampling_rate=32000,
        hop_length=320,
        n_fft=1024,
        num_mel_bins=64,
        f_min=50.0,
        f_max=14000.0,
        spec_size=256,
        patch_size=4,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(4, 8, 16, 32),
        window_size=8,
        mlp_ratio=4.0,
        qkv_bias=True,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.1,
        layer_norm_eps=1e-5,
        batch_norm_eps=1e-5,
        use_token_semantic_head=True,
        spec_augment_time_stripes=2,
        spec_augment_time_width=64,
        spec_augment_freq_stripes=2,
        spec_augment_freq_width=8,
        initializer_range=0.02,
        **kwargs,
    ):
        self.sampling_rate = int(sampling_rate)
        self.hop_length = int(hop_length)
        self.n_fft = int(n_fft)
        self.num_mel_bins = int(num_mel_bins)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.spec_size = int(spec_size)
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.depths = [int(d) for d in depths]
        self.num_heads = [int(h) for h in num_heads]
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_dropout = float(attention_dropout)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_eps = float(layer_norm_eps)
        self.batch_norm_eps = float(batch_norm_eps)
        self.use_token_semantic_head = bool(use_token_semantic_head)
        self.spec_augment_time_stripes = int(spec_augment_time_stripes)
        self.spec_augment_time_width = int(spec_augment_time_width)
        self.spec_augment_freq_stripes = int(spec_augment_freq_stripes)
        self.spec_augment_freq_width = int(spec_augment_freq_width)
        self.initializer_range = float(initializer_range)
        if kwargs.get("id2label") is None:
            kwargs.setdefault("num_labels", 527)
        kwargs.setdefault("problem_type", "multi_label_classification")
        super().__init__(**kwargs)
        self._validate()

    def _validate(self):
        if len(self.depths) != len(self.num_heads):
            raise InputError(f"depths {self.depths} and num_heads {self.num_heads} must have one entry per stage")
        if self.num_mel_bins > self.spec_size:
            raise InputError(f"num_mel_bins ({self.num_mel_bins}) cannot exceed spec_size ({self.spec_size})")
        grid = self.spec_size // self.patch_size
        if self.spec_size % self.patch_size or grid % 2 ** (len(self.depths) - 1):
            raise InputError(
                f"spec_size {self.spec_size} must be divisible by patch_size {self.patch_size} and leave a token "
                f"grid divisible by 2**{len(self.depths) - 1} for the patch-merging stages"
            )
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise InputError(f"stage {stage} width {self.embed_dim * 2**stage} is not divisible by {heads} heads")
        last_grid = grid // 2 ** (len(self.depths) - 1)
        if last_grid % self.freq_ratio:
            raise InputError(
                f"the last stage's {last_grid}x{last_grid} token grid cannot be split into freq_ratio={self.freq_ratio} "
                "time chunks; choose spec_size, patch_size and num_mel_bins so that it can"
            )
        if not 0 <= self.f_min < self.f_max:
            raise InputError(f"need 0 <= f_min < f_max, got f_min={self.f_min}, f_max={self.f_max}")

    def to_diff_dict(self) -> dict:
        """The saved `config.json`'s content; the class list is always part of it. transformers leaves `id2label`
        out when it equals its own two-class default, and an HTS-AT config without one means 527 classes, so a
        two-class model would otherwise reload with 527; `label2id` is written as `id2label`'s inverse."""
        diff = super().to_diff_dict()
        diff["id2label"] = {str(index): label for index, label in self.id2label.items()}
        diff["label2id"] = {label: int(index) for index, label in self.id2label.items()}
        return diff

    @property
    def freq_ratio(self) -> int:
        """How many consecutive time chunks are stacked along the frequency axis of the image (4 by default)."""
        return self.spec_size // self.num_mel_bins

    @property
    def max_frames(self) -> int:
        """Longest spectrogram (in frames) the model accepts; shorter ones are stretched to it (1024 by default)."""
        return self.spec_size * self.freq_ratio

    @property
    def num_time_steps(self) -> int:
        """Time resolution of the frame-level output: steps per (stretched) clip (32 by default)."""
        last_grid = self.spec_size // self.patch_size // 2 ** (len(self.depths) - 1)
        return last_grid * self.freq_ratio

    @property
    def hidden_size(self) -> int:
        """Width of the final token embeddings (768 by default)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


__all__ = ["HTSATConfig"]
